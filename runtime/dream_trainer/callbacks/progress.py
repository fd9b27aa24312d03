"""ProgressCallback: a progress line on rank 0 (step, loss, tokens/s, ETA) and a final summary.

The accounting behind it (tokens seen, losses averaged over data-parallel ranks, throughput and
ETA) lives in :class:`ProgressMeter`, which :class:`~dream_trainer.callbacks.ProgressBarCallback`
shares, together with the line formats :func:`progress_line`, :func:`validation_line` and
:func:`summary_line`.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import torch

from dream_trainer.callbacks.callback import Callback

if TYPE_CHECKING:
    from dream_trainer.trainer.base import BaseTrainer


def tokens_in(batch: Any) -> int:
    """Tokens in a batch: ``input_ids`` elements for dict batches, else the first tensor's."""
    if isinstance(batch, dict) and isinstance(batch.get("input_ids"), torch.Tensor):
        return batch["input_ids"].numel()
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0].numel()
    return batch.numel() if isinstance(batch, torch.Tensor) else 0


def format_duration(seconds: float) -> str:
    """``1h02m03s``, or ``2m03s`` under an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


_tokens_in = tokens_in  # the names this module had before the meter was factored out
_duration = format_duration


def total_steps(trainer: BaseTrainer) -> int | None:
    """Optimizer steps the whole run will take: the smaller of ``n_epochs`` x steps per epoch and
    ``max_steps``; None when neither is known (an iterable loader without a length)."""
    params = trainer.config.training_parameters
    per_epoch = trainer._steps_in_epoch(trainer._train_loader())
    by_epochs = None if params.n_epochs is None or per_epoch is None else (
        params.n_epochs * per_epoch)
    limits = [n for n in (by_epochs, params.max_steps) if n is not None]
    return min(limits) if limits else None


def progress_line(step: int, total: int | None, epoch: int, loss: float, tokens_per_second: float,
                  eta_seconds: float | None) -> str:
    """``step 20/60 | epoch 0 | loss 3.8370 | 12,655 tok/s | ETA 0m01s``."""
    of = f"/{total}" if total is not None else ""
    eta = "" if eta_seconds is None else f" | ETA {format_duration(eta_seconds)}"
    return (f"step {step}{of} | epoch {epoch} | loss {loss:.4f} | "
            f"{tokens_per_second:,.0f} tok/s{eta}")


def validation_line(step: int, result: dict[str, float]) -> str:
    """``validation @ step 20 | val_loss 2.5000``: the results sorted by name."""
    shown = " | ".join(f"{k} {v:.4f}" for k, v in sorted(result.items()))
    return f"validation @ step {step} | {shown}"


def summary_line(summary: dict[str, float]) -> str:
    """``done: 40 steps in 0m02s | final loss 2.6139 | 11,168 tok/s``."""
    return (f"done: {int(summary['steps'])} steps in {format_duration(summary['seconds'])} | "
            f"final loss {summary['loss']:.4f} | {summary['tokens_per_second']:,.0f} tok/s")


class ProgressMeter:
    """What a progress display needs to know, kept the same way on every rank.

    Tokens are counted on the host (``numel`` of each batch, times the data-parallel size, so the
    count is global); losses are summed on their own device (no host sync per step) and averaged
    over data-parallel ranks only in :meth:`reduce_loss`, a collective that every rank must call
    at the same step. Call :meth:`start` in ``pre_fit``, :meth:`count_batch` in
    ``pre_train_step`` and :meth:`add_loss` in ``post_train_step``.
    """

    def __init__(self) -> None:
        self.last_loss = float("nan")
        """The loss of the last :meth:`reduce_loss` (mean over steps and data-parallel ranks)."""
        self.total: int | None = None
        """Optimizer steps of the whole run (None when unknown)."""
        self.start_step: int | None = None
        """The trainer's ``global_step`` at the first training batch (a resumed run starts past
        step 0, so ETA and rates count from here)."""
        self.tokens = 0
        """Global tokens seen since :meth:`start`."""

    def start(self, trainer: BaseTrainer) -> None:
        """Reset everything; the clock starts now."""
        self.trainer = trainer
        self.started = self.window_started = time.perf_counter()
        self.tokens = self.window_tokens = 0
        self._loss_sum, self._loss_count = torch.zeros(()), 0
        self.last_loss = float("nan")
        self.start_step = None
        self.total = total_steps(trainer)

    def count_batch(self, batch: Any) -> int:
        """Count a micro-batch's tokens (times the data-parallel size); returns that count."""
        if self.start_step is None:  # here, not in start(): a resumed run starts past step 0
            self.start_step = self.trainer.global_step
        tokens = tokens_in(batch) * self.trainer.world.dp_size
        self.tokens += tokens
        self.window_tokens += tokens
        return tokens

    def add_loss(self, result: Any) -> None:
        """Add ``result["loss"]`` (a tensor) to the running sum, on its device."""
        loss = result.get("loss") if isinstance(result, dict) else None
        if isinstance(loss, torch.Tensor):
            # Summed on the loss's own device: a .cpu() here would sync the GPU every step.
            value = loss.detach().float()
            self._loss_sum = value if self._loss_count == 0 else self._loss_sum + value
            self._loss_count += 1

    @property
    def has_pending_loss(self) -> bool:
        """Whether losses were added since the last :meth:`reduce_loss`."""
        return self._loss_count > 0

    def reduce_loss(self) -> float:
        """Mean of the losses added since the last call, over micro-batches and data-parallel
        ranks. A collective: call it on every rank at the same step."""
        mean = self._loss_sum / max(self._loss_count, 1)
        self.last_loss = float(self.trainer.world.all_reduce_mean(mean.to(self.trainer.device)))
        self._loss_sum, self._loss_count = torch.zeros(()), 0
        return self.last_loss

    def window_rate(self, now: float) -> float:
        """Global tokens per second since the last :meth:`end_window` (or :meth:`start`)."""
        return self.window_tokens / max(now - self.window_started, 1e-9)

    def end_window(self, now: float) -> None:
        """Start a new throughput window at ``now``."""
        self.window_started, self.window_tokens = now, 0

    def eta(self, step: int, now: float) -> float | None:
        """Seconds left to :attr:`total`, at the mean pace of the steps done so far in this run;
        None when the total is unknown or no step is done yet."""
        start = step if self.start_step is None else self.start_step
        done = step - start
        if self.total is None or done <= 0:
            return None
        return (now - self.started) / done * (self.total - step)

    def summary(self) -> dict[str, float]:
        """``steps`` done in this run, last ``loss``, mean ``tokens_per_second``, ``seconds``."""
        elapsed = time.perf_counter() - self.started
        step = self.trainer.global_step
        start = step if self.start_step is None else self.start_step
        return {
            "steps": float(step - start),
            "loss": self.last_loss,
            "tokens_per_second": self.tokens / max(elapsed, 1e-9),
            "seconds": elapsed,
        }


class ProgressCallback(Callback):
    """Every ``every_n_steps`` optimizer steps, rank 0 prints the loss averaged over the steps
    since the last line and over data-parallel ranks, the global token throughput and an ETA.
    After training it prints a summary and keeps it in :attr:`summary`.

    It runs on every rank (the loss average is a collective) and prints on global rank 0.
    """

    def __init__(self, every_n_steps: int = 10, stream: TextIO | None = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: must be >= 1")
        self.every_n_steps = every_n_steps
        self.stream = stream
        self.summary: dict[str, float] = {}
        self.meter = ProgressMeter()

    def _print(self, text: str) -> None:
        if self.trainer.world.is_global_zero:
            print(text, file=self.stream or sys.stdout, flush=True)

    def pre_fit(self) -> None:
        self.meter.start(self.trainer)

    def pre_train_step(self, batch: Any, batch_idx: int) -> None:
        self.meter.count_batch(batch)

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        self.meter.add_loss(result)
        if self.trainer.is_accumulating_gradients:
            return
        step = self.trainer.global_step + 1  # counters advance after this hook
        if step % self.every_n_steps == 0:
            self._report(step)

    def _report(self, step: int) -> None:
        meter = self.meter
        loss = meter.reduce_loss()
        now = time.perf_counter()
        self._print(progress_line(step, meter.total, self.trainer.current_epoch, loss,
                                  meter.window_rate(now), meter.eta(step, now)))
        meter.end_window(now)

    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        if result and not self.trainer.sanity_checking:
            self._print(validation_line(self.trainer.global_step, result))

    def post_fit(self) -> None:
        if self.meter.has_pending_loss:
            self._report(self.trainer.global_step)
        self.summary = self.meter.summary()
        self._print(summary_line(self.summary))
