"""Trainer mixins: compose the features a trainer needs."""

from dream_trainer.trainer.mixins.setup import (
    DataLoaderSetupConfigMixin,
    DataLoaderSetupMixin,
    ModelSetupConfigMixin,
    ModelSetupMixin,
    OptimizerAndSchedulerSetupConfigMixin,
    OptimizerAndSchedulerSetupMixin,
    SetupConfigMixin,
    SetupMixin,
)

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
