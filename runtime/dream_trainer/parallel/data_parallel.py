"""Data parallelism: FSDP2 (and HSDP on a 2-D mesh) and DDP, plus gradient-sync control."""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn
from torch.distributed._composable.replicate import DDP as ReplicatedModule
from torch.distributed._composable.replicate import replicate
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

logger = logging.getLogger(__name__)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: children of every ModuleList/ModuleDict (outermost only)."""
    blocks: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)) and not any(
            module in list(b.modules()) for b in blocks
        ):
            blocks.extend(module.children() if isinstance(module, nn.ModuleList)
                          else module.values())
    return blocks


def apply_fsdp(model: nn.Module, **fsdp_config: Any) -> nn.Module:
    """Shard ``model`` with FSDP2: each repeated block becomes its own FSDP unit, then the root.

    Per-block units let FSDP all-gather one block while the previous one computes, and free it
    right after; the root unit holds what is left (embeddings, final norm, output head).
    ``fsdp_config`` is passed to ``fully_shard`` (``mesh``, ``mp_policy``, ``offload_policy``,
    ``reshard_after_forward``). The last block is not resharded after forward: backward needs it
    first, so FSDP would gather it again immediately.
    """
    blocks = _blocks(model)
    reshard = fsdp_config.pop("reshard_after_forward", True)
    for i, block in enumerate(blocks):
        fully_shard(block, reshard_after_forward=reshard and i < len(blocks) - 1, **fsdp_config)
    fully_shard(model, reshard_after_forward=reshard, **fsdp_config)
    logger.info("applied FSDP2 to %s (%d blocks) on %s", type(model).__name__, len(blocks),
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
    # fully_shard and replicate both turn the module into a subclass with this method.
    if isinstance(model, (FSDPModule, ReplicatedModule)):
        model.set_requires_gradient_sync(enabled)
