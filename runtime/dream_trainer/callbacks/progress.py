"""ProgressCallback: a progress line on rank 0 (step, loss, tokens/s, ETA) and a final summary."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import torch

from dream_trainer.callbacks.callback import Callback


def _tokens_in(batch: Any) -> int:
    """Tokens in a batch: ``input_ids`` elements for dict batches, else the first tensor's."""
    if isinstance(batch, dict) and isinstance(batch.get("input_ids"), torch.Tensor):
        return batch["input_ids"].numel()
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0].numel()
    return batch.numel() if isinstance(batch, torch.Tensor) else 0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ProgressCallback(Callback):
    """Every ``every_n_steps`` optimizer steps, rank 0 prints the loss averaged over the steps
    since the last line and over data-parallel ranks, the global token throughput and an ETA.
    After training it prints a summary and keeps it in :attr:`summary`."""

    def __init__(self, every_n_steps: int = 10, stream: TextIO | None = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: must be >= 1")
        self.every_n_steps = every_n_steps
        self.stream = stream
        self.summary: dict[str, float] = {}

    def _print(self, text: str) -> None:
        if self.trainer.world.is_global_zero:
            print(text, file=self.stream or sys.stdout, flush=True)

    def pre_fit(self) -> None:
        self._start = self._window_start = time.perf_counter()
        self._tokens = self._window_tokens = 0
        self._loss_sum, self._loss_count = torch.zeros(()), 0
        self._last_loss = float("nan")
        self._start_step: int | None = None
        self._total = self._total_steps()

    def _total_steps(self) -> int | None:
        params = self.trainer.config.training_parameters
        per_epoch = self.trainer._steps_in_epoch(self.trainer._train_loader())
        by_epochs = None if params.n_epochs is None or per_epoch is None else (
            params.n_epochs * per_epoch)
        limits = [n for n in (by_epochs, params.max_steps) if n is not None]
        return min(limits) if limits else None

    def pre_train_step(self, batch: Any, batch_idx: int) -> None:
        if self._start_step is None:  # here, not in pre_fit: a resumed run starts past step 0
            self._start_step = self.trainer.global_step
        tokens = _tokens_in(batch) * self.trainer.world.dp_size
        self._tokens += tokens
        self._window_tokens += tokens

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        loss = result.get("loss") if isinstance(result, dict) else None
        if isinstance(loss, torch.Tensor):
            # Summed on the loss's own device: a .cpu() here would sync the GPU every step.
            value = loss.detach().float()
            self._loss_sum = value if self._loss_count == 0 else self._loss_sum + value
            self._loss_count += 1
        if self.trainer.is_accumulating_gradients:
            return
        step = self.trainer.global_step + 1  # counters advance after this hook
        if step % self.every_n_steps == 0:
            self._report(step)

    def _report(self, step: int) -> None:
        mean = self._loss_sum / max(self._loss_count, 1)
        self._last_loss = float(self.trainer.world.all_reduce_mean(mean.to(self.trainer.device)))
        now = time.perf_counter()
        rate = self._window_tokens / max(now - self._window_start, 1e-9)
        total = self._total
        start = step if self._start_step is None else self._start_step
        done = step - start
        eta = ""
        if total is not None and done > 0:
            eta = f" | ETA {_duration((now - self._start) / done * (total - step))}"
        of = f"/{total}" if total is not None else ""
        self._print(f"step {step}{of} | epoch {self.trainer.current_epoch} | "
                    f"loss {self._last_loss:.4f} | {rate:,.0f} tok/s{eta}")
        self._loss_sum, self._loss_count = torch.zeros(()), 0
        self._window_start, self._window_tokens = now, 0

    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        if result and not self.trainer.sanity_checking:
            shown = " | ".join(f"{k} {v:.4f}" for k, v in sorted(result.items()))
            self._print(f"validation @ step {self.trainer.global_step} | {shown}")

    def post_fit(self) -> None:
        if self._loss_count:
            self._report(self.trainer.global_step)
        elapsed = time.perf_counter() - self._start
        start = self.trainer.global_step if self._start_step is None else self._start_step
        self.summary = {
            "steps": float(self.trainer.global_step - start),
            "loss": self._last_loss,
            "tokens_per_second": self._tokens / max(elapsed, 1e-9),
            "seconds": elapsed,
        }
        self._print(f"done: {int(self.summary['steps'])} steps in {_duration(elapsed)} | "
                    f"final loss {self._last_loss:.4f} | "
                    f"{self.summary['tokens_per_second']:,.0f} tok/s")
