"""OptimizerAndSchedulerSetupMixin: optimizers and LR schedulers, tracked by attribute."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from dream_trainer.configs.errors import require_choice
from dream_trainer.trainer.abstract import AbstractTrainer


@dataclass(kw_only=True)
class OptimizerAndSchedulerSetupConfigMixin:
    """Optimizer/scheduler options."""

    scheduler_interval: Literal["step", "epoch"] = "step"
    """Step LR schedulers after every optimizer step, or once per epoch."""

    def __post_init__(self) -> None:
        require_choice(f"{type(self).__name__}.scheduler_interval", self.scheduler_interval,
                       ("step", "epoch"))
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]


class OptimizerAndSchedulerSetupMixin(AbstractTrainer):
    """Optimizers and schedulers are tracked by assigning them to attributes. A scheduler is bound
    to the optimizer it was built with: ``self.step(model, optimizer)`` steps exactly those."""

    def configure_optimizers(self) -> None:
        """Create optimizers over the (already parallelised, initialised) model parameters."""
        raise TypeError(f"{type(self).__name__} must implement configure_optimizers()")

    def configure_schedulers(self) -> None:
        """Create LR schedulers (optional)."""

    def named_optimizers(self) -> dict[str, Optimizer]:
        return self._named_attributes(Optimizer)

    def named_schedulers(self) -> dict[str, LRScheduler]:
        return self._named_attributes(LRScheduler)

    def _setup_optimizers_and_schedulers(self) -> None:
        self.configure_optimizers()
        if not self.named_optimizers():
            raise TypeError(f"{type(self).__name__}.configure_optimizers() assigned no optimizer "
                            "attribute; write e.g. self.optimizer = torch.optim.AdamW(...)")
        self.configure_schedulers()
