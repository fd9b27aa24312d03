"""AbstractTrainer: the state and extension points every trainer and mixin shares."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from dream_trainer.callbacks.callback import CallbackCollection
from dream_trainer.world import DistributedWorld


class AbstractTrainer:
    """What mixins may rely on: ``config``, ``world``, ``callbacks``, the counters, and the
    cooperative ``configure()`` / ``setup()`` chain (every override calls ``super()`` first)."""

    config: Any
    world: DistributedWorld
    callbacks: CallbackCollection
    global_step: int
    current_epoch: int
    local_batches: int
    training: bool

    def configure(self) -> None:
        """Build models (on the meta device) and anything else that needs no memory yet."""

    def setup(self) -> None:
        """Parallelise, materialise and initialise; build optimizers, schedulers and data."""

    def named_models(self) -> dict[str, nn.Module]:
        return {}

    def named_optimizers(self) -> dict[str, Optimizer]:
        return {}

    def named_schedulers(self) -> dict[str, LRScheduler]:
        return {}

    def _named_attributes(self, kind: type | tuple[type, ...]) -> dict[str, Any]:
        """Attributes of this trainer that are instances of ``kind``, in assignment order."""
        return {name: value for name, value in vars(self).items()
                if isinstance(value, kind) and not name.startswith("_")}
