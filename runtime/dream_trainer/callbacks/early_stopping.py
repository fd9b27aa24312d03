"""EarlyStoppingCallback: end training when a monitored metric stops improving."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from dream_trainer.callbacks.callback import Callback
from dream_trainer.configs.errors import ConfigError, require_choice, require_int, require_number
from dream_trainer.utils.rank_zero import rank_zero_print

logger = logging.getLogger(__name__)

_NAME = "EarlyStoppingCallback"


class EarlyStoppingCallback(Callback):
    """Stops training once ``monitor`` has not improved for ``patience`` evaluations in a row.

    After every validation run (``check_on="validation"``; sanity validation is ignored) or every
    training epoch (``check_on="train_epoch"``, monitoring a key of the epoch's mean training
    results such as ``"loss"``), the monitored value is compared with the best seen so far. It
    *improves* when it is better by more than ``min_delta``: ``value < best - min_delta`` for
    ``mode="min"``, ``value > best + min_delta`` for ``mode="max"`` (the first value always does).
    Each evaluation without improvement adds one to :attr:`wait`; an improvement resets it. When
    ``wait`` reaches ``patience`` the callback calls ``trainer.request_stop(reason)``: the current
    step finishes, ``post_fit`` runs (so a final checkpoint is written) and ``fit()`` returns.
    A non-finite value (NaN, inf) stops at once when ``check_finite`` is True.

    **Every rank decides the same.** The results it reads are the trainer's validation (or epoch)
    means, all-reduced over the data-parallel ranks before any callback sees them, so each rank
    holds the same numbers, counts the same way and stops at the same step; no extra collective
    is needed.

    **Checkpoints** hold :attr:`best`, :attr:`wait` and :attr:`stopped_step`, so a resumed run keeps
    counting where it left off. Resuming a run that already stopped early (``wait >= patience``)
    stops again before its first step; raise ``patience`` to continue it.

    Example::

        EarlyStoppingCallback(monitor="val_loss", patience=3, min_delta=1e-3, mode="min")
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0,
                 mode: Literal["min", "max"] = "min",
                 check_on: Literal["validation", "train_epoch"] = "validation", *,
                 threshold: float | None = None, check_finite: bool = True) -> None:
        """``threshold`` is another name for ``min_delta`` (seed 004's
        ``early_stopping_threshold``); pass one or the other."""
        if threshold is not None:
            if min_delta != 0.0:
                raise ConfigError(f"{_NAME}.threshold", threshold,
                                  f"is another name for min_delta, which is also set ({min_delta})",
                                  "pass only one of min_delta and threshold")
            min_delta = threshold
        if not isinstance(monitor, str) or not monitor:
            raise ConfigError(f"{_NAME}.monitor", monitor, "must be a non-empty string",
                              "name a key of the validation results such as 'val_loss'")
        require_int(f"{_NAME}.patience", patience, minimum=0)
        require_number(f"{_NAME}.min_delta", min_delta, minimum=0.0)
        require_choice(f"{_NAME}.mode", mode, ("min", "max"))
        require_choice(f"{_NAME}.check_on", check_on, ("validation", "train_epoch"))
        self.monitor = monitor
        self.patience = patience
        self.min_delta = float(min_delta)
        self.mode = mode
        self.check_on = check_on
        self.check_finite = check_finite
        self.best = math.inf if mode == "min" else -math.inf
        """Best monitored value so far (inf / -inf before the first evaluation)."""
        self.best_step = -1
        """Global step at which :attr:`best` was seen (-1: none yet)."""
        self.wait = 0
        """Evaluations in a row without improvement."""
        self.stopped_step: int | None = None
        """Global step at which this callback stopped training, or None."""

    # ----------------------------------------------------------------- hooks
    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        if self.check_on == "validation" and not self.trainer.sanity_checking:
            self._check(result, "validation results")

    def post_train_epoch(self, result: dict[str, Any]) -> None:
        if self.check_on == "train_epoch":
            self._check(result, "training epoch results")

    def pre_fit(self) -> None:
        if self.check_on == "validation" and getattr(self.trainer, "val_dataloader", None) is None:
            logger.warning("EarlyStoppingCallback watches validation results, but %s has no "
                           "val_dataloader: it will never stop training (use "
                           "check_on='train_epoch' to watch training results)",
                           type(self.trainer).__name__)
        # After a resume (loaded before or during pre_fit), a run that had already stopped stays
        # stopped unless patience was raised.
        self._stop_if_exhausted()

    # ----------------------------------------------------------------- decision
    def improved(self, value: float) -> bool:
        """Whether ``value`` beats :attr:`best` by more than ``min_delta``."""
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def _check(self, result: dict[str, Any], what: str) -> None:
        if self.monitor not in result:
            raise ConfigError(f"{_NAME}.monitor", self.monitor,
                              f"is not among the {what} {sorted(result)}",
                              "pass one of those keys, or return it from "
                              + ("validation_step" if what.startswith("validation")
                                 else "training_step"))
        value = float(result[self.monitor])
        step = self.trainer.global_step
        if not math.isfinite(value):
            if self.check_finite:
                self._stop(f"{self.monitor}={value} is not finite")
                return
            self.wait += 1
        elif self.improved(value):
            self.best, self.best_step, self.wait = value, step, 0
        else:
            self.wait += 1
        logger.debug("early stopping: %s=%.6g best=%.6g wait=%d/%d", self.monitor, value,
                     self.best, self.wait, self.patience)
        self._stop_if_exhausted()

    def _stop_if_exhausted(self) -> None:
        if self.wait >= self.patience and self.wait > 0:
            self._stop(f"{self.monitor} did not improve by more than {self.min_delta:g} for "
                       f"{self.wait} evaluation(s) (best {self.best:.6g} at step "
                       f"{self.best_step})")

    def _stop(self, why: str) -> None:
        trainer = self.trainer
        if self.stopped_step is None:
            self.stopped_step = trainer.global_step
        reason = f"early stopping: {why}"
        if trainer.stop_reason is None:
            rank_zero_print(f"{reason}; stopping at step {trainer.global_step}")
        trainer.request_stop(reason)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "wait": self.wait,
                "stopped_step": -1 if self.stopped_step is None else self.stopped_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = float(state_dict["best"])
        self.best_step = int(state_dict["best_step"])
        self.wait = int(state_dict["wait"])
        stopped = int(state_dict["stopped_step"])
        self.stopped_step = None if stopped < 0 else stopped
        if hasattr(self, "trainer"):
            self._stop_if_exhausted()
