"""ProfilerCallback: ``torch.profiler`` traces of a few training steps, one file per rank."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from dream_trainer.callbacks.callback import Callback
from dream_trainer.configs.errors import ConfigError, require_bool, require_int

logger = logging.getLogger(__name__)


class ProfilerCallback(Callback):
    """Profile training steps with ``torch.profiler`` on the chosen ranks.

    The profiler starts at the first training batch and advances once per optimizer step (so a
    ``ProfilerStep#N`` span covers every micro-batch of step N), following
    ``torch.profiler.schedule(wait, warmup, active, repeat, skip_first)``: ``wait`` steps idle,
    ``warmup`` steps traced but discarded (the first traced steps carry the tracer's own
    start-up cost), ``active`` steps recorded, the cycle ``repeat`` times (0: until training
    ends). After each active window a Chrome/Perfetto trace is written to
    ``output_dir/rank{R}.step{N}.pt.trace.json``, the layout ``tensorboard_trace_handler``
    writes, so TensorBoard's profiler plugin, ``chrome://tracing`` and https://ui.perfetto.dev
    all open it. A window cut short by the end of training is still written.

    Args:
        wait, warmup, active, repeat, skip_first: the schedule (see above).
        output_dir: a local directory (created if missing).
        record_shapes: record operator input shapes.
        profile_memory: track tensor allocations and frees.
        with_stack: record Python stacks of operators (larger traces).
        ranks: global ranks that profile; None for every rank.

    :attr:`traces` lists the files written by this rank.
    """

    def __init__(self, wait: int = 1, warmup: int = 1, active: int = 3, repeat: int = 1,
                 output_dir: str | os.PathLike[str] = "profiler", record_shapes: bool = False,
                 profile_memory: bool = False, with_stack: bool = False,
                 ranks: Iterable[int] | None = (0,), skip_first: int = 0) -> None:
        for name, value, minimum in (("wait", wait, 0), ("warmup", warmup, 0),
                                     ("active", active, 1), ("repeat", repeat, 0),
                                     ("skip_first", skip_first, 0)):
            require_int(f"ProfilerCallback.{name}", value, minimum=minimum)
        for name, value in (("record_shapes", record_shapes), ("profile_memory", profile_memory),
                            ("with_stack", with_stack)):
            require_bool(f"ProfilerCallback.{name}", value)
        if ranks is not None:
            ranks = tuple(ranks)
            if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in ranks):
                raise ConfigError("ProfilerCallback.ranks", ranks, "must be global ranks (ints "
                                  ">= 0)", "pass e.g. ranks=(0,), or ranks=None for every rank")
        self.wait, self.warmup, self.active = wait, warmup, active
        self.repeat, self.skip_first = repeat, skip_first
        self.output_dir = Path(output_dir)
        self.record_shapes = record_shapes
        self.profile_memory = profile_memory
        self.with_stack = with_stack
        self.ranks: tuple[int, ...] | None = ranks
        self.traces: list[Path] = []
        """Trace files written by this rank, in order."""
        self.profiler: profile | None = None
        """The running ``torch.profiler.profile`` (None before the first step and after fit)."""
        self._started = False

    def _profiles_here(self) -> bool:
        return self.ranks is None or self.trainer.world.rank in self.ranks

    def _activities(self) -> list[ProfilerActivity]:
        activities = [ProfilerActivity.CPU]
        if self.trainer.device.type == "cuda" and torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        return activities

    def _trace_ready(self, prof: profile) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / f"rank{self.trainer.world.rank}.step{prof.step_num}.pt.trace.json"
        prof.export_chrome_trace(str(path))
        self.traces.append(path)
        logger.info("profiler trace written to %s", path)

    def pre_fit(self) -> None:
        self.traces = []
        self._started = False

    def pre_train_step(self, batch: Any, batch_idx: int) -> None:
        if self._started or not self._profiles_here():
            return
        self._started = True  # once per fit()
        self.profiler = profile(
            activities=self._activities(),
            schedule=schedule(wait=self.wait, warmup=self.warmup, active=self.active,
                              repeat=self.repeat, skip_first=self.skip_first),
            on_trace_ready=self._trace_ready, record_shapes=self.record_shapes,
            profile_memory=self.profile_memory, with_stack=self.with_stack)
        self.profiler.start()

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        if self.profiler is not None and not self.trainer.is_accumulating_gradients:
            self.profiler.step()

    def _stop(self) -> None:
        profiler, self.profiler = self.profiler, None
        if profiler is not None:
            profiler.stop()

    def post_fit(self) -> None:
        self._stop()

    def on_interrupt(self) -> None:
        try:
            self._stop()
        except Exception:  # the training error matters more than a lost trace
            logger.exception("stopping the profiler failed")
