"""BenchmarkCallback: per-step wall times and throughput statistics of a training run."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import torch

from dream_trainer.callbacks.callback import Callback
from dream_trainer.callbacks.progress import tokens_in
from dream_trainer.configs.errors import require_bool, require_int


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks (NumPy's
    default method); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class BenchmarkCallback(Callback):
    """Times every optimizer step and reports step-time statistics and throughput at the end.

    A step's time runs from the end of the previous step to the end of this one, so it includes
    loading its batches and the other callbacks, as a real run pays them; the first step of
    ``fit()`` and the first after a validation run start at their first batch instead (loader
    start-up and validation are not training steps). With ``sync_device`` the accelerator is
    synchronised before each clock reading, so a step's time includes its queued GPU work (this
    costs a little overlap; without it CUDA times measure only the host's launch speed).

    Args:
        warmup_steps: the first steps of each ``fit()`` not counted (compilation, allocator
            warm-up, first all-gathers).
        sync_device: synchronise CUDA (or the current accelerator) at each clock reading.
        stream: where rank 0 prints the report (default ``sys.stdout``).

    Each rank times itself; :attr:`step_times` holds this rank's measured steps (seconds) and
    :attr:`results` the statistics: ``steps``, ``mean``, ``median``, ``p90``, ``min``, ``max``
    (seconds per step), ``steps_per_second``, ``samples_per_second``, ``tokens_per_second``
    (global: tokens of a batch times the data-parallel size) and, on CUDA,
    ``peak_memory_gib``. Global rank 0 prints them after training.
    """

    def __init__(self, warmup_steps: int = 2, sync_device: bool = True,
                 stream: TextIO | None = None) -> None:
        require_int("BenchmarkCallback.warmup_steps", warmup_steps, minimum=0)
        require_bool("BenchmarkCallback.sync_device", sync_device)
        self.warmup_steps = warmup_steps
        self.sync_device = sync_device
        self.stream = stream
        self.step_times: list[float] = []
        """Seconds of each measured (post-warmup) optimizer step on this rank."""
        self.warmup_times: list[float] = []
        """Seconds of the warm-up steps, not part of :attr:`results`."""
        self.results: dict[str, float] = {}
        self._step_tokens: list[int] = []
        self._start: float | None = None
        self._tokens = 0

    def _now(self) -> float:
        if self.sync_device:
            device = self.trainer.device
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elif device.type != "cpu" and hasattr(torch, "accelerator"):
                torch.accelerator.synchronize()
        return time.perf_counter()

    # ----------------------------------------------------------------- hooks
    def pre_fit(self) -> None:
        self.step_times, self.warmup_times, self._step_tokens = [], [], []
        self.results = {}
        self._start, self._tokens = None, 0
        if self.trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.trainer.device)

    def pre_train_step(self, batch: Any, batch_idx: int) -> None:
        if self._start is None:
            self._start = self._now()
        self._tokens += tokens_in(batch) * self.trainer.world.dp_size

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        if self.trainer.is_accumulating_gradients or self._start is None:
            return
        now = self._now()
        seconds = now - self._start
        if len(self.warmup_times) < self.warmup_steps:
            self.warmup_times.append(seconds)
        else:
            self.step_times.append(seconds)
            self._step_tokens.append(self._tokens)
        self._start, self._tokens = now, 0

    def pre_validation_epoch(self) -> None:
        self._start, self._tokens = None, 0  # validation is not part of any step

    def post_fit(self) -> None:
        self.results = self.compute_results()
        if self.trainer.world.is_global_zero:
            print(self.report(), file=self.stream or sys.stdout, flush=True)

    # ----------------------------------------------------------------- results
    def compute_results(self) -> dict[str, float]:
        """Statistics of :attr:`step_times` (empty when no step was measured)."""
        times = self.step_times
        if not times:
            return {}
        total = sum(times)
        params = self.trainer.config.training_parameters
        samples = params.train_batch_size * params.gradient_accumulation_steps
        results = {
            "steps": float(len(times)),
            "mean": total / len(times),
            "median": percentile(times, 50),
            "p90": percentile(times, 90),
            "min": min(times),
            "max": max(times),
            "steps_per_second": len(times) / max(total, 1e-12),
            "samples_per_second": samples * len(times) / max(total, 1e-12),
            "tokens_per_second": sum(self._step_tokens) / max(total, 1e-12),
        }
        if self.trainer.device.type == "cuda":
            results["peak_memory_gib"] = torch.cuda.max_memory_allocated(
                self.trainer.device) / 2**30
        return results

    def report(self) -> str:
        """The line rank 0 prints after training."""
        r = self.results
        if not r:
            return (f"benchmark: no step measured ({len(self.warmup_times)} warm-up steps of "
                    f"warmup_steps={self.warmup_steps}); train longer or lower warmup_steps")
        memory = f" | peak memory {r['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in r else ""
        return (f"benchmark: {int(r['steps'])} steps after {len(self.warmup_times)} warm-up | "
                f"step time mean {r['mean']:.4f}s median {r['median']:.4f}s "
                f"p90 {r['p90']:.4f}s max {r['max']:.4f}s | {r['steps_per_second']:.2f} steps/s"
                f" | {r['samples_per_second']:,.1f} samples/s | "
                f"{r['tokens_per_second']:,.0f} tok/s{memory}")
