"""SetupMixin: models, then optimizers and schedulers, then dataloaders, in that order."""

from __future__ import annotations

from dataclasses import dataclass

from dream_trainer.trainer.mixins.setup.dataloader import (
    DataLoaderSetupConfigMixin,
    DataLoaderSetupMixin,
)
from dream_trainer.trainer.mixins.setup.models import ModelSetupConfigMixin, ModelSetupMixin
from dream_trainer.trainer.mixins.setup.optimizers import (
    OptimizerAndSchedulerSetupConfigMixin,
    OptimizerAndSchedulerSetupMixin,
)


@dataclass(kw_only=True)
class SetupConfigMixin(
    ModelSetupConfigMixin, OptimizerAndSchedulerSetupConfigMixin, DataLoaderSetupConfigMixin
):
    """The config fields of the three setup mixins."""


class SetupMixin(ModelSetupMixin, OptimizerAndSchedulerSetupMixin, DataLoaderSetupMixin):
    """Orchestrates setup. ``configure()``: ``configure_models`` on the meta device, then
    ``post_configure_models``. ``setup()``: parallelism hooks → materialise → ``init_weights`` →
    ``configure_optimizers`` → ``configure_schedulers`` → ``configure_dataloaders``.

    The order is explicit here rather than left to the MRO: optimizers need the final (sharded,
    materialised) parameters, and schedulers need optimizers.
    """

    def configure(self) -> None:
        super().configure()
        self._configure_models()

    def setup(self) -> None:
        super().setup()
        self._setup_models()
        self._setup_optimizers_and_schedulers()
        self._setup_dataloaders()
