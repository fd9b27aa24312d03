"""DreamTrainer: the batteries-included composition of BaseTrainer and the mixins."""

from __future__ import annotations

from dataclasses import dataclass

from dream_trainer.trainer.base import BaseTrainer, BaseTrainerConfig
from dream_trainer.trainer.mixins.eval_metric import EvalMetricConfigMixin, EvalMetricMixin
from dream_trainer.trainer.mixins.loggers import LocalLoggerConfigMixin, LocalLoggerMixin
from dream_trainer.trainer.mixins.setup import SetupConfigMixin, SetupMixin


@dataclass(kw_only=True)
class DreamTrainerConfig(BaseTrainerConfig, SetupConfigMixin, EvalMetricConfigMixin,
                         LocalLoggerConfigMixin):
    """Config of :class:`DreamTrainer`: the base fields, the setup mixins' fields, the metric
    fields (``metric_prefix``, ``log_metrics``) and the local logger's (``log_dir``,
    ``plot_loss_curve``)."""


class DreamTrainer(BaseTrainer, SetupMixin, EvalMetricMixin, LocalLoggerMixin):
    """BaseTrainer + SetupMixin + EvalMetricMixin + LocalLoggerMixin.

    Implement ``configure_models``, ``init_weights``, ``configure_optimizers``,
    ``configure_dataloaders``, ``training_step`` and ``validation_step``; optionally
    ``configure_metrics`` (torchmetrics, computed over all ranks at the end of each validation).
    ``self.log_scalar`` / ``log_dict`` / ``log_image`` write to ``log_dir`` on rank 0; add
    ``LoggerCallback`` to the callbacks to log training and validation results, or add
    ``WandBLoggerMixin`` to the bases (and ``WandBLoggerConfigMixin`` to the config) to log to
    W&B as well.
    """

    config: DreamTrainerConfig
