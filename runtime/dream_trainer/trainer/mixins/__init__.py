"""Trainer mixins: compose the features a trainer needs."""

from dream_trainer.trainer.mixins.eval_metric import EvalMetricConfigMixin, EvalMetricMixin
from dream_trainer.trainer.mixins.loggers import (
    LocalLoggerConfigMixin,
    LocalLoggerMixin,
    LoggerMixin,
    WandBLoggerConfigMixin,
    WandBLoggerMixin,
)
from dream_trainer.trainer.mixins.quantize import (
    ExcludeModuleByName,
    ExcludeSubmodules,
    QuantizeConfigMixin,
    QuantizeMixin,
)
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
    "ExcludeModuleByName",
    "ExcludeSubmodules",
    "QuantizeConfigMixin",
    "QuantizeMixin",
    "DataLoaderSetupConfigMixin",
    "DataLoaderSetupMixin",
    "ModelSetupConfigMixin",
    "ModelSetupMixin",
    "OptimizerAndSchedulerSetupConfigMixin",
    "OptimizerAndSchedulerSetupMixin",
    "SetupConfigMixin",
    "SetupMixin",
]
__all__ += ["EvalMetricConfigMixin", "EvalMetricMixin", "LocalLoggerConfigMixin",
            "LocalLoggerMixin", "LoggerMixin", "WandBLoggerConfigMixin", "WandBLoggerMixin"]
