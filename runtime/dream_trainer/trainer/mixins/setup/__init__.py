from dream_trainer.trainer.mixins.setup.dataloader import (
    DataLoaderSetupConfigMixin,
    DataLoaderSetupMixin,
)
from dream_trainer.trainer.mixins.setup.models import ModelSetupConfigMixin, ModelSetupMixin
from dream_trainer.trainer.mixins.setup.optimizers import (
    OptimizerAndSchedulerSetupConfigMixin,
    OptimizerAndSchedulerSetupMixin,
)
from dream_trainer.trainer.mixins.setup.setup import SetupConfigMixin, SetupMixin

__all__ = [
    "DataLoaderSetupConfigMixin",
    "DataLoaderSetupMixin",
    "ModelSetupConfigMixin",
    "ModelSetupMixin",
    "OptimizerAndSchedulerSetupConfigMixin",
    "OptimizerAndSchedulerSetupMixin",
    "SetupConfigMixin",
    "SetupMixin",
]
