"""Activation checkpointing: recompute activations in backward instead of keeping them."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Literal

import torch
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from dream_trainer.parallel.blocks import replace_blocks

logger = logging.getLogger(__name__)

# Ops whose outputs are expensive to recompute relative to the memory they hold: matmuls and
# attention. Selective AC saves every other matmul output (torchtitan's policy): about half the
# recompute of full AC for a fraction of the memory of no AC.
_SAVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _selective_context():
    counts: dict[str, int] = defaultdict(int)

    def policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
        mode = "recompute" if ctx.is_recompute else "forward"
        if func == torch.ops.aten.mm.default:
            counts[f"{mode}_mm"] += 1
        # Save attention always and every second matmul; recompute everything else.
        if func in _SAVE_OPS and not (func == torch.ops.aten.mm.default
                                      and counts[f"{mode}_mm"] % 2 == 0):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_ac(model: nn.Module, mode: Literal["full", "selective"] = "full") -> nn.Module:
    """Wrap each repeated block of ``model`` for activation checkpointing.

    ``full`` keeps only each block's input and recomputes the block in backward; ``selective``
    also keeps matmul/attention outputs by an op-level policy. Applied per block, before compile
    and FSDP, so compile sees the checkpointed region and FSDP wraps the checkpointed block.
    """
    if mode == "full":
        wrap = checkpoint_wrapper
    else:
        def wrap(block: nn.Module) -> nn.Module:
            return checkpoint_wrapper(block, context_fn=_selective_context)
    count = replace_blocks(model, wrap)
    logger.info("applied %s activation checkpointing to %d blocks", mode, count)
    return model
