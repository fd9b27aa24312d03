"""Tensor parallelism (with sequence parallelism) and async TP."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module

from dream_trainer.configs.errors import ConfigError

logger = logging.getLogger(__name__)


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, plan: dict[str, ParallelStyle]) -> nn.Module:
    """Shard ``model`` over ``tp_mesh`` following ``plan`` (module path -> ParallelStyle; paths may
    use ``*`` wildcards, e.g. ``"layers.*.attention.wq"``). Plans are data: one dict says where
    every weight lives, so reviewing TP means reading a table, not code paths."""
    parallelize_module(model, tp_mesh, plan)
    logger.info("applied tensor parallelism (%d entries) over %s", len(plan), tp_mesh)
    return model


def check_sequence_length(sequence_length: int, tp: int, cp: int) -> None:
    """Sequence parallelism splits the sequence over TP ranks, and load-balanced context
    parallelism splits it into 2·CP chunks; both must divide it evenly."""
    factor = tp * (2 * cp if cp > 1 else 1)
    if sequence_length % factor:
        raise ConfigError("sequence_length", sequence_length,
                          f"must be divisible by tensor_parallel x 2*context_parallel = {factor} "
                          f"(tp={tp}, cp={cp})",
                          f"use a multiple of {factor}, e.g. {(sequence_length // factor + 1) * factor}")


def enable_async_tp(tp_mesh: DeviceMesh) -> None:
    """Overlap TP collectives with matmuls (micro-pipelined TP). Needs CUDA, symmetric memory and
    torch.compile, which fuses the all-gather/reduce-scatter with the neighbouring matmul."""
    if tp_mesh.device_type != "cuda":
        raise ConfigError("DeviceParameters.async_tensor_parallel", True,
                          f"async TP needs CUDA symmetric memory; this mesh is on "
                          f"{tp_mesh.device_type!r}", "set async_tensor_parallel=False")
    try:
        from torch.distributed._symmetric_memory import enable_symm_mem_for_group
    except ImportError as err:  # a torch build without symmetric memory
        raise ConfigError("DeviceParameters.async_tensor_parallel", True,
                          f"this torch build has no symmetric memory ({err})",
                          "set async_tensor_parallel=False") from err
    torch._inductor.config._micro_pipeline_tp = True
    enable_symm_mem_for_group(tp_mesh.get_group().group_name)
    logger.info("enabled async tensor parallelism over %s", tp_mesh)
