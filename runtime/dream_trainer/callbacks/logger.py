"""LoggerCallback: training results, validation results and learning rates, through the trainer's
logger mixin (``LocalLoggerMixin``, ``WandBLoggerMixin``, ...)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from dream_trainer.callbacks.callback import Callback
from dream_trainer.configs.errors import ConfigError
from dream_trainer.utils.scalars import scalar_items

if TYPE_CHECKING:
    from dream_trainer.trainer.mixins.loggers import LoggerMixin


class LoggerCallback(Callback):
    """Logs what the training loop produces through whichever ``LoggerMixin`` backends the
    trainer has (``DreamTrainer`` has ``LocalLoggerMixin``).

    - **Training**: every ``log_every_n_train_batches`` optimizer steps, the mean of each scalar
      that ``training_step`` returned (``loss``, ``grad_norm``, ...) over the micro-batches since
      the last log and over data-parallel ranks, as ``train/<key>`` at the number of steps done;
      and the learning rate of every param group used by the last step, as
      ``lr/<optimizer>/<group>`` (the group's ``"name"`` if it has one, else its index). A
      "train batch" here is an optimizer step: a global batch, accumulated micro-batches included.
    - **Validation**: the validation results at the end of each validation epoch (all-reduced,
      metrics of ``EvalMetricMixin`` included), named as returned (``val_loss``, ``val_accuracy``)
      or ``val/<key>`` for keys that do not start with ``val``; sanity validation is not logged.
      With ``log_every_n_val_batches`` also the mean of each scalar over every N validation
      batches, as ``val_batch/<key>`` (all at the current step, so a backend that keeps one value
      per step and name, like W&B, keeps the last).
    - **Start**: the trainer config (``log_config``) and, with ``code_dir``, the ``*.py`` sources
      under it (``log_code``).

    Every rank runs the hooks (the means are all-reduced, one collective per log); only global
    rank 0 writes.
    """

    def __init__(self, log_every_n_train_batches: int | None = 10,
                 log_every_n_val_batches: int | None = None,
                 code_dir: str | os.PathLike[str] | None = None,
                 log_learning_rates: bool = True) -> None:
        for name, value in (("log_every_n_train_batches", log_every_n_train_batches),
                            ("log_every_n_val_batches", log_every_n_val_batches)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"LoggerCallback.{name}", value, "must be an int >= 1 or None",
                                  "pass e.g. 10, or None to turn this logging off")
        self.log_every_n_train_batches = log_every_n_train_batches
        self.log_every_n_val_batches = log_every_n_val_batches
        self.code_dir = code_dir
        self.log_learning_rates = log_learning_rates
        self._train: dict[str, torch.Tensor] = {}
        self._train_counts: dict[str, int] = {}
        self._val: dict[str, torch.Tensor] = {}
        self._val_counts: dict[str, int] = {}
        self._val_batches = 0
        self._lrs: dict[str, float] = {}
        self._logged_step = -1

    # The trainer is checked when the callback is attached, with an error that names the fix.
    @property
    def trainer(self) -> LoggerMixin:
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        from dream_trainer.trainer.mixins.loggers import LoggerMixin

        if not isinstance(trainer, LoggerMixin):
            raise TypeError(
                f"LoggerCallback needs a trainer with a logger mixin, but {type(trainer).__name__} "
                "has none. Fix: derive the trainer from DreamTrainer (it includes "
                "LocalLoggerMixin), or add LocalLoggerMixin or WandBLoggerMixin from "
                "dream_trainer.trainer.mixins to its bases (and LocalLoggerConfigMixin / "
                "WandBLoggerConfigMixin to its config)")
        self._trainer = trainer

    # ------------------------------------------------------------------ start
    def pre_fit(self) -> None:
        self.trainer.log_config()
        if self.code_dir is not None:
            self.trainer.log_code(self.code_dir)

    # ------------------------------------------------------------------ training
    def pre_train_step(self, batch: Any, batch_idx: int) -> None:
        if self.log_learning_rates:
            # Read before the step: the rates this step uses (its scheduler steps after it).
            self._lrs = self._learning_rates()

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        every = self.log_every_n_train_batches
        if every is None:
            return
        _accumulate(self._train, self._train_counts, result)
        trainer = self.trainer
        if trainer.is_accumulating_gradients:
            return
        step = trainer.global_step + 1  # the counters advance after this hook
        if step % every == 0:
            self._log_train(step)

    def post_fit(self) -> None:
        if self._train_counts and self.trainer.global_step > self._logged_step:
            self._log_train(self.trainer.global_step)  # the last, partial window

    def _log_train(self, step: int) -> None:
        values = {f"train/{k}": v for k, v in self._reduce(self._train, self._train_counts).items()}
        values.update(self._lrs)
        self._train, self._train_counts = {}, {}
        self._logged_step = step
        self.trainer.log_dict(values, step=step)

    def _learning_rates(self) -> dict[str, float]:
        named = getattr(self.trainer, "named_optimizers", None)
        rates: dict[str, float] = {}
        for opt_name, optimizer in (named() if callable(named) else {}).items():
            for i, group in enumerate(optimizer.param_groups):
                lr = group.get("lr")
                if lr is not None:
                    rates[f"lr/{opt_name}/{group.get('name', i)}"] = float(lr)
        return rates

    # ------------------------------------------------------------------ validation
    def pre_validation_epoch(self) -> None:
        self._val, self._val_counts, self._val_batches = {}, {}, 0

    def post_validation_step(self, result: dict[str, Any], batch_idx: int) -> None:
        every = self.log_every_n_val_batches
        if every is None or self.trainer.sanity_checking:
            return
        _accumulate(self._val, self._val_counts, result)
        self._val_batches += 1
        if self._val_batches % every == 0:
            values = self._reduce(self._val, self._val_counts)
            self._val, self._val_counts = {}, {}
            self.trainer.log_dict({f"val_batch/{k}": v for k, v in values.items()},
                                  step=self.trainer.global_step)

    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        if self.trainer.sanity_checking or not result:
            return
        values = {(k if k.startswith("val") else f"val/{k}"): v for k, v in result.items()
                  if isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool)}
        self.trainer.log_dict(values, step=self.trainer.global_step)

    # ------------------------------------------------------------------ helpers
    def _reduce(self, sums: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, float]:
        """Per-key means over the window, then over the ranks that see different data (one
        collective for all keys). Every rank calls it with the same keys."""
        if not sums:
            return {}
        keys = sorted(sums)
        device = self.trainer.world.device
        stacked = torch.stack([sums[k].to(device) / counts[k] for k in keys])
        stacked = self.trainer.world.all_reduce_mean(stacked)
        return dict(zip(keys, stacked.tolist(), strict=True))

    def state_dict(self) -> dict[str, Any]:
        return {}


def _accumulate(sums: dict[str, torch.Tensor], counts: dict[str, int], result: Any) -> None:
    """Add the scalar entries of a step result to running sums (on the device: no host sync)."""
    for key, value in scalar_items(result):
        sums[key] = sums[key] + value.to(sums[key].device) if key in sums else value
        counts[key] = counts.get(key, 0) + 1
