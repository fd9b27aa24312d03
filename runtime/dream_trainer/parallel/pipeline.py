"""Pipeline parallelism: split a model into stages and build a schedule over the pp mesh."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (
    PipelineScheduleMulti,
    PipelineScheduleSingle,
    _PipelineSchedule,
    get_schedule_class,
)

from dream_trainer.configs.errors import ConfigError

logger = logging.getLogger(__name__)

V_SCHEDULES = ("ZBVZeroBubble", "DualPipeV")
"""Schedules that place a rank's two stages in a V: rank r holds stages r and 2·pp-1-r."""


@dataclass
class Pipeline:
    """A model's pipeline on this rank: the schedule and which ends of the pipe it holds."""

    schedule: _PipelineSchedule
    stages: list[PipelineStage]
    has_first_stage: bool
    has_last_stage: bool
    loss_scale: float = 1.0
    """Multiplies the loss inside the schedule (the trainer sets 1/accumulation in training)."""


def schedule_class(name: str) -> type[_PipelineSchedule]:
    try:
        return get_schedule_class(name)
    except ValueError as err:
        raise ConfigError("DeviceParameters.pipeline_schedule", name, str(err).rstrip("."),
                          "use e.g. 'GPipe', '1F1B', 'Interleaved1F1B' or 'ZBVZeroBubble'") from err


def stage_ids(schedule: str, pp_rank: int, pp_size: int, stages_per_rank: int) -> list[int]:
    """The stage indices this rank holds: looped (r, r+pp, ...) or V-shaped for V schedules."""
    if schedule in V_SCHEDULES:
        if stages_per_rank != 2:
            raise ConfigError("DeviceParameters.pipeline_stages_per_rank", stages_per_rank,
                              f"{schedule} places exactly two stages per rank",
                              "set pipeline_stages_per_rank=2")
        return [pp_rank, 2 * pp_size - 1 - pp_rank]
    return [pp_rank + i * pp_size for i in range(stages_per_rank)]


def check_schedule(schedule: str, stages_per_rank: int) -> None:
    """Single-stage schedules need one stage per rank; multi-stage ones need more."""
    cls = schedule_class(schedule)
    if issubclass(cls, PipelineScheduleSingle) and stages_per_rank != 1:
        raise ConfigError("DeviceParameters.pipeline_stages_per_rank", stages_per_rank,
                          f"{schedule} runs one stage per rank",
                          "set pipeline_stages_per_rank=1 or pick a multi-stage schedule such "
                          "as 'Interleaved1F1B'")
    if issubclass(cls, PipelineScheduleMulti) and stages_per_rank < 2:
        raise ConfigError("DeviceParameters.pipeline_stages_per_rank", stages_per_rank,
                          f"{schedule} interleaves several stages per rank",
                          "set pipeline_stages_per_rank=2 (or more), or use '1F1B'/'GPipe'")


def split_layers(n_layers: int, n_stages: int) -> list[range]:
    """Contiguous, equal layer ranges for each stage."""
    if n_layers % n_stages:
        raise ConfigError("n_layers", n_layers,
                          f"{n_stages} pipeline stages need a layer count divisible by {n_stages}",
                          f"use pipeline_parallel x pipeline_stages_per_rank dividing {n_layers}, "
                          f"or {(n_layers // n_stages + 1) * n_stages} layers")
    per = n_layers // n_stages
    return [range(i * per, (i + 1) * per) for i in range(n_stages)]


def build_pipeline(
    model: nn.Module,
    pp_mesh: DeviceMesh,
    device: torch.device,
    *,
    schedule: str,
    stages_per_rank: int,
    n_microbatches: int,
    make_stage: Callable[[nn.Module, int, int], nn.Module],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Pipeline:
    """Split ``model`` into ``pp x stages_per_rank`` stages and build ``schedule`` over them.

    ``make_stage(copy_of_model, stage_index, n_stages)`` trims a deep copy of the (meta-device)
    model down to one stage in place and returns it; parameter names stay those of the full
    model, so checkpoints are keyed the same with and without pipelining. ``loss_fn`` runs on the
    last stage for each micro-batch; the schedule averages gradients over micro-batches.
    """
    check_schedule(schedule, stages_per_rank)
    pp_rank, pp_size = pp_mesh.get_local_rank(), pp_mesh.size()
    n_stages = pp_size * stages_per_rank
    ids = stage_ids(schedule, pp_rank, pp_size, stages_per_rank)
    group = pp_mesh.get_group()
    stages = [PipelineStage(make_stage(copy.deepcopy(model), i, n_stages), i, n_stages, device,
                            group=group) for i in ids]
    pipeline = Pipeline(None, stages, has_first_stage=0 in ids,  # type: ignore[arg-type]
                        has_last_stage=n_stages - 1 in ids)

    def scaled_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_fn(output, target) * pipeline.loss_scale

    cls = schedule_class(schedule)
    first = stages[0] if issubclass(cls, PipelineScheduleSingle) else stages
    pipeline.schedule = cls(first, n_microbatches=n_microbatches, loss_fn=scaled_loss)
    logger.info("pipeline %s: rank %d/%d holds stages %s of %d, %d micro-batches", schedule,
                pp_rank, pp_size, ids, n_stages, n_microbatches)
    return pipeline


def broadcast_from_last_stage(value: torch.Tensor, pp_mesh: DeviceMesh,
                              holds_last: bool) -> torch.Tensor:
    """Send the last stage's scalar (e.g. the loss) to every rank of the pipeline."""
    group = pp_mesh.get_group()
    flags = torch.tensor([float(holds_last)], device=value.device)
    gathered = [torch.empty_like(flags) for _ in range(pp_mesh.size())]
    dist.all_gather(gathered, flags, group=group)
    src = dist.get_global_rank(group, int(torch.cat(gathered).argmax()))
    out = value.detach().clone()
    dist.broadcast(out, src=src, group=group)
    return out
