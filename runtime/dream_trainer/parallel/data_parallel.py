"""Data parallelism: FSDP2 (and HSDP on a 2-D mesh) and DDP, plus gradient-sync control."""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn
from torch.distributed._composable.replicate import DDP as ReplicatedModule
from torch.distributed._composable.replicate import replicate
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from dream_trainer.parallel.blocks import blocks

logger = logging.getLogger(__name__)


def apply_fsdp(model: nn.Module, **fsdp_config: Any) -> nn.Module:
    """Shard ``model`` with FSDP2: each repeated block becomes its own FSDP unit, then the root.

    Per-block units let FSDP all-gather one block while the previous one computes, and free it
    right after; the root unit holds what is left (embeddings, final norm, output head).
    ``fsdp_config`` is passed to ``fully_shard`` (``mesh``, ``mp_policy``, ``offload_policy``,
    ``reshard_after_forward``). The last block and the root are not resharded after forward:
    backward needs them first, so FSDP would gather them again immediately.
    """
    units = blocks(model)
    reshard = fsdp_config.pop("reshard_after_forward", True)
    for i, block in enumerate(units):
        fully_shard(block, reshard_after_forward=reshard and i < len(units) - 1, **fsdp_config)
    # None lets FSDP2 keep the root unit gathered from forward into backward (it would be
    # gathered again at once), which saves one all-gather of the embeddings and head per step.
    fully_shard(model, reshard_after_forward=None if reshard else False, **fsdp_config)
    logger.info("applied FSDP2 to %s (%d blocks) on %s", type(model).__name__, len(units),
                fsdp_config.get("mesh"))
    return model


def apply_ddp(model: nn.Module, dp_mesh: DeviceMesh) -> nn.Module:
    """Replicate ``model`` over ``dp_mesh`` and all-reduce gradients in buckets (composable DDP)."""
    replicate(model, device_mesh=dp_mesh, bucket_cap_mb=100)
    logger.info("applied DDP to %s on %s", type(model).__name__, dp_mesh)
    return model


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Turn cross-rank gradient reduction on or off for the next backward.

    Off on accumulating micro-batches: gradients then accumulate locally and are reduced once,
    on the last micro-batch, which saves (accumulation - 1) reductions per optimizer step.
    """
    # fully_shard and replicate turn a module into a subclass with this switch. A pipelined model
    # holds several such roots (one per local stage), so look at every submodule.
    for module in model.modules():
        if isinstance(module, (FSDPModule, ReplicatedModule)):
            module.set_requires_gradient_sync(enabled)
