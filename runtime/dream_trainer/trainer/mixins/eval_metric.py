"""EvalMetricMixin: torchmetrics metrics computed over the whole validation set, on every rank.

Usage::

    class MyTrainer(DreamTrainer):            # DreamTrainer includes EvalMetricMixin
        def configure_metrics(self):           # runs in setup(); optional
            self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=10)
            self.scores = torchmetrics.MetricCollection({"f1": F1Score(...), "auroc": AUROC(...)})

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self.model(x)
            self.accuracy(logits, y)           # or self.accuracy.update(logits, y)
            self.scores.update(logits, y)
            return {"val_loss": F.cross_entropy(logits, y)}

At the end of every validation epoch each metric is computed over what *all* data-parallel ranks
saw (torchmetrics gathers the states), merged into the validation results as ``val_accuracy``,
``val_f1``, ``val_auroc`` (``EvalMetricConfigMixin.metric_prefix`` + the attribute name, or the
collection's keys), and reset. The merged results reach every callback's
``post_validation_epoch``, ``trainer.last_validation_result``, the progress line and checkpoint
monitors (``CheckpointParameters(monitor="val_accuracy", mode="max")``).
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dream_trainer.callbacks.callback import Callback, CallbackCollection
from dream_trainer.configs.errors import ConfigError, require_bool
from dream_trainer.trainer.abstract import AbstractTrainer

logger = logging.getLogger(__name__)

_METRICS_ATTR = "_eval_metrics"
_CALLBACK_NAME = "_eval_metrics"


def is_metric(value: Any) -> bool:
    """True for a torchmetrics ``Metric`` or ``MetricCollection`` (without importing torchmetrics:
    if it was never imported, no value can be one)."""
    torchmetrics = sys.modules.get("torchmetrics")
    return torchmetrics is not None and isinstance(
        value, (torchmetrics.Metric, torchmetrics.MetricCollection))


def _leaf_metrics(value: Any) -> list[Any]:
    """The ``Metric`` objects of a metric or collection (collections may nest)."""
    torchmetrics = sys.modules["torchmetrics"]
    if isinstance(value, torchmetrics.MetricCollection):
        return [leaf for m in value.values(copy_state=False) for leaf in _leaf_metrics(m)]
    return [value]


@dataclass(kw_only=True)
class EvalMetricConfigMixin:
    """Config fields of :class:`EvalMetricMixin`."""

    metric_prefix: str = "val_"
    """Prefix of the metric names in the validation results: ``self.accuracy`` becomes
    ``val_accuracy``. Names that already start with it are kept as they are."""

    log_metrics: bool = True
    """Log the computed metrics through the trainer's ``LoggerMixin`` (if it has one) at the end
    of every validation epoch. When a ``LoggerCallback`` is attached it logs them with the rest of
    the validation results instead, so they are never logged twice."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.metric_prefix, str):
            raise ConfigError(f"{name}.metric_prefix", self.metric_prefix, "expected a str",
                              'pass a string such as "val_" (or "" for no prefix)')
        require_bool(f"{name}.log_metrics", self.log_metrics)
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]


class EvalMetricMixin(AbstractTrainer):
    """Validation metrics with torchmetrics (install the ``metrics`` extra).

    **Defining.** Implement :meth:`configure_metrics` and assign ``torchmetrics.Metric`` or
    ``MetricCollection`` objects to attributes (``self.accuracy = Accuracy(...)``). It runs in
    ``setup()``; the metrics are then moved to the trainer's device. Metrics assigned to attributes
    anywhere are tracked the same way. They are modules, but they are kept apart from the models:
    never sharded, compiled, put in an optimizer or checkpointed (:meth:`named_metrics` lists them,
    :meth:`named_models` does not).

    **Updating.** In ``validation_step`` call the metric (``self.accuracy(preds, target)``, which
    also returns the batch's value) or ``self.accuracy.update(preds, target)``. Pass plain tensors:
    call ``.full_tensor()`` on DTensor outputs (e.g. under ``loss_parallel``). Metrics are reset
    when a validation epoch starts and after it ends, so updates made during training are dropped.

    **Computing.** At the end of each validation epoch (sanity validation included) every rank
    computes every metric; torchmetrics gathers the states over the ranks that saw different data:
    the ``dp_cp`` mesh (data-parallel ranks, and context-parallel ranks, which hold different tokens
    of the same samples). Tensor- and pipeline-parallel peers see the same samples and are not
    counted twice. With pipeline parallelism only the last stage has the model's outputs: the
    values of the last stage are sent to every stage, so all ranks report the same numbers. A
    metric created with ``sync_on_compute=False`` or its own ``process_group`` is left as
    configured. Values are merged into the validation results (see :class:`EvalMetricConfigMixin`
    for the names); tensors with several elements become ``name/0``, ``name/1``, ...
    """

    config: Any

    # ------------------------------------------------------------------ user hook
    def configure_metrics(self) -> None:
        """Create metrics and assign them to attributes. Optional: without metrics nothing
        happens."""

    # ------------------------------------------------------------------ tracking
    def __setattr__(self, name: str, value: Any) -> None:
        metrics = self.__dict__.get(_METRICS_ATTR)
        if is_metric(value):
            if metrics is None:
                metrics = self.__dict__[_METRICS_ATTR] = {}
            self.__dict__.pop(name, None)
            metrics[name] = value
            return
        if metrics is not None:
            metrics.pop(name, None)
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: metrics live in a dict of their own.
        metrics = self.__dict__.get(_METRICS_ATTR)
        if metrics is not None and name in metrics:
            return metrics[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        metrics = self.__dict__.get(_METRICS_ATTR)
        if metrics is not None and name in metrics:
            del metrics[name]
            return
        super().__delattr__(name)

    def named_metrics(self) -> dict[str, Any]:
        """The tracked metrics and metric collections, by attribute name, in assignment order."""
        return dict(self.__dict__.get(_METRICS_ATTR, {}))

    # ------------------------------------------------------------------ lifecycle
    def configure(self) -> None:
        super().configure()
        _add_first(self.callbacks, _EvalMetricCallback(), _CALLBACK_NAME)

    def setup(self) -> None:
        super().setup()
        self.configure_metrics()
        self._setup_metrics()

    def _setup_metrics(self) -> None:
        group = self._metric_process_group()
        for name, metric in self.named_metrics().items():
            metric.to(self.world.device)
            for leaf in _leaf_metrics(metric):
                if leaf.process_group is None and group is not None:
                    leaf.process_group = group
            logger.debug("metric %s on %s", name, self.world.device)

    def _metric_process_group(self) -> Any:
        """The group metrics sync over: ``dp_cp``; None (the default group) when it is the world."""
        mesh = self.world.get_mesh("dp_cp")
        if mesh.size() == self.world.size:
            return None
        return mesh.get_group()

    # ------------------------------------------------------------------ computing
    def reset_metrics(self) -> None:
        """Reset every tracked metric."""
        for metric in self.named_metrics().values():
            metric.reset()

    def compute_metrics(self) -> dict[str, float]:
        """Compute every metric over all data-parallel ranks and return ``{result name: float}``.

        Collective: every rank must call it (the end of validation does). Does not reset.
        """
        prefix = getattr(self.config, "metric_prefix", "val_")
        values: dict[str, float] = {}
        for name, metric in self.named_metrics().items():
            metric.to(self.world.device)  # a metric assigned after setup()
            with warnings.catch_warnings():
                if all(not leaf.update_called for leaf in _leaf_metrics(metric)):
                    # e.g. pipeline stages other than the last: their values are replaced below
                    warnings.filterwarnings("ignore", message=".*was called before the ``update``")
                result = metric.compute()
            if isinstance(result, dict):
                for key, value in result.items():
                    _flatten(values, _prefixed(str(key), prefix), value)
            else:
                _flatten(values, _prefixed(name, prefix), result)
        if self.world.dims.pp > 1 and values:
            values = _from_last_stage(values, self.world.get_mesh("pp"))
        return values


def _prefixed(name: str, prefix: str) -> str:
    return name if name.startswith(prefix) else prefix + name


def _flatten(out: dict[str, float], name: str, value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(out, f"{name}/{key}", item)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flatten(out, f"{name}/{i}", item)
        return
    if isinstance(value, torch.Tensor):
        flat = value.detach().float().reshape(-1).cpu().tolist()
        if len(flat) == 1:
            out[name] = flat[0]
        else:
            for i, item in enumerate(flat):
                out[f"{name}/{i}"] = item
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out[name] = float(value)
        return
    raise TypeError(f"metric {name!r} computed a {type(value).__name__}; EvalMetricMixin merges "
                    "numbers and tensors into the validation results. Compute it yourself in a "
                    "callback, or assign it to an attribute that starts with '_' to untrack it")


def _from_last_stage(values: dict[str, float], pp_mesh: Any) -> dict[str, float]:
    """The last pipeline stage's values, on every stage (it alone has the model's outputs)."""
    box: list[Any] = [values]
    group = pp_mesh.get_group()
    dist.broadcast_object_list(box, group=group, group_src=pp_mesh.size() - 1)
    return box[0]


def _add_first(callbacks: CallbackCollection, callback: Callback, name: str) -> None:
    """Add ``callback`` before every other one (once): its results must be in place before any
    other callback reads them."""
    if name in callbacks:
        return
    others = list(callbacks.items())
    for key, _ in others:
        dict.__delitem__(callbacks, key)
    callbacks.add(callback, name)
    for key, value in others:
        dict.__setitem__(callbacks, key, value)


class _EvalMetricCallback(Callback[EvalMetricMixin]):
    """Installed first by :class:`EvalMetricMixin`: resets metrics when validation starts, and when
    it ends computes them, merges them into the results (in place, before other callbacks see
    them), logs them and resets them."""

    trainer: EvalMetricMixin

    def pre_validation_epoch(self) -> None:
        self.trainer.reset_metrics()

    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        trainer = self.trainer
        if not trainer.named_metrics():
            return
        values = trainer.compute_metrics()
        trainer.reset_metrics()
        clash = sorted(set(values) & set(result))
        if clash:
            logger.warning("metric results %s replace validation_step results of the same name",
                           clash)
        result.update(values)
        if not trainer.sanity_checking and getattr(trainer.config, "log_metrics", True):
            self._log(values)

    def _log(self, values: dict[str, float]) -> None:
        from dream_trainer.callbacks.logger import LoggerCallback
        from dream_trainer.trainer.mixins.loggers import LoggerMixin

        trainer = self.trainer
        if not isinstance(trainer, LoggerMixin):
            return
        if any(isinstance(c, LoggerCallback) for c in trainer.callbacks.values()):
            return  # it logs the whole validation result, metrics included
        trainer.log_dict(values, step=trainer.global_step)
