"""DreamTrainer: the batteries-included composition of BaseTrainer and the mixins."""

from __future__ import annotations

from dataclasses import dataclass

from dream_trainer.trainer.base import BaseTrainer, BaseTrainerConfig
from dream_trainer.trainer.mixins import SetupConfigMixin, SetupMixin


@dataclass(kw_only=True)
class DreamTrainerConfig(BaseTrainerConfig, SetupConfigMixin):
    """Config of :class:`DreamTrainer`."""


class DreamTrainer(BaseTrainer, SetupMixin):
    """BaseTrainer + SetupMixin. Implement ``configure_models``, ``init_weights``,
    ``configure_optimizers``, ``configure_dataloaders``, ``training_step`` and
    ``validation_step``."""

    config: DreamTrainerConfig
