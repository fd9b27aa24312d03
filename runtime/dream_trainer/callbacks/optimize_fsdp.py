"""OptimizeFSDP: prefetch FSDP2 all-gathers in the order modules actually run."""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn
from torch.distributed.fsdp import FSDPModule
from torch.utils.hooks import RemovableHandle

from dream_trainer.callbacks.callback import Callback
from dream_trainer.trainer.mixins.setup.models import ModelSetupMixin

logger = logging.getLogger(__name__)


class OptimizeFSDP(Callback[ModelSetupMixin]):
    """Records the order in which FSDP units run during the first training step, then tells each
    unit which ``prefetch`` units to all-gather ahead of time: the next ones in forward, the
    previous ones in backward (which runs in reverse).

    FSDP2's implicit prefetching only looks one unit ahead and only in backward by default;
    explicit lists from the real execution order overlap communication with more compute, also
    for models whose call order differs from their definition order.
    """

    def __init__(self, prefetch: int = 1) -> None:
        if prefetch < 1:
            raise ValueError(f"OptimizeFSDP(prefetch={prefetch}): prefetch must be >= 1")
        self.prefetch = prefetch
        self.order: list[FSDPModule] = []
        self._hooks: list[RemovableHandle] = []

    def _units(self) -> list[FSDPModule]:
        units: list[FSDPModule] = []
        for name in self.trainer.named_models():
            for part in self.trainer.model_parts(name):
                units.extend(m for m in part.modules() if isinstance(m, FSDPModule))
        return units

    def post_setup(self) -> None:
        def record(module: nn.Module, args: Any) -> None:
            if module not in self.order:
                self.order.append(module)  # type: ignore[arg-type]

        self._hooks = [unit.register_forward_pre_hook(record)  # type: ignore[union-attr]
                       for unit in self._units()]

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        if not self._hooks:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        order = self.order
        for i, unit in enumerate(order):
            forward = order[i + 1:i + 1 + self.prefetch]
            backward = order[max(0, i - self.prefetch):i][::-1]
            if forward:
                unit.set_modules_to_forward_prefetch(forward)
            if backward:
                unit.set_modules_to_backward_prefetch(backward)
        logger.info("OptimizeFSDP: %d units, prefetch %d", len(order), self.prefetch)
