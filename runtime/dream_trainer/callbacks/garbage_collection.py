"""GarbageCollectionCallback: collect garbage at the same steps on every rank.

Python's automatic collector runs whenever allocation counters cross a threshold, so each rank
pauses at its own moments; a full (generation 2) pass over the millions of objects of a large
job can take hundreds of milliseconds, and every other rank then waits for it at the next
collective. Turning automatic collection off during training and collecting every N steps on
all ranks at once turns those random stragglers into one short, shared pause.
"""

from __future__ import annotations

import gc
import logging
import time

from dream_trainer.callbacks.callback import Callback
from dream_trainer.configs.errors import ConfigError, require_bool, require_int

logger = logging.getLogger(__name__)


class GarbageCollectionCallback(Callback):
    """Disable automatic garbage collection from ``pre_fit`` to the end of ``fit()`` and run
    ``gc.collect(generation)`` every ``every_n_steps`` optimizer steps, on every rank.

    Args:
        every_n_steps: collect after optimizer steps ``N, 2N, ...`` (global step numbers, so a
            resumed run keeps the cadence). All ranks count the same steps, so they pause
            together.
        generation: the generation collected: 2 (the default) is a full collection, 0 or 1
            only the young objects (cheaper, but cycles that reached generation 2 stay).
        collect_at_start: also collect once in ``pre_fit``, clearing setup's garbage before
            the first step.

    The collector's previous state (enabled or not) is restored in ``post_fit`` and when
    ``fit()`` raises. :attr:`collected_at` lists the steps after which it collected and
    :attr:`seconds` the time each collection took.
    """

    def __init__(self, every_n_steps: int = 500, generation: int = 2,
                 collect_at_start: bool = True) -> None:
        require_int("GarbageCollectionCallback.every_n_steps", every_n_steps, minimum=1)
        if isinstance(generation, bool) or generation not in (0, 1, 2):
            raise ConfigError("GarbageCollectionCallback.generation", generation,
                              "must be 0, 1 or 2", "pass 2 for a full collection (the default)")
        require_bool("GarbageCollectionCallback.collect_at_start", collect_at_start)
        self.every_n_steps = every_n_steps
        self.generation = generation
        self.collect_at_start = collect_at_start
        self.collected_at: list[int] = []
        """Global steps after which a periodic collection ran (``pre_fit``'s is not listed)."""
        self.seconds: list[float] = []
        """Duration of each periodic collection, in the order of :attr:`collected_at`."""
        self._was_enabled: bool | None = None

    def _collect(self) -> float:
        started = time.perf_counter()
        gc.collect(self.generation)
        return time.perf_counter() - started

    def pre_fit(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()
        self.collected_at, self.seconds = [], []
        if self.collect_at_start:
            self._collect()

    def post_train_step(self, result: object, batch_idx: int) -> None:
        if self.trainer.is_accumulating_gradients:
            return
        step = self.trainer.global_step + 1  # the counters advance after this hook
        if step % self.every_n_steps == 0:
            seconds = self._collect()
            self.collected_at.append(step)
            self.seconds.append(seconds)
            logger.debug("gc.collect(%d) at step %d took %.3fs", self.generation, step, seconds)

    def _restore(self) -> None:
        if self._was_enabled is None:
            return
        if self._was_enabled:
            gc.enable()
        self._was_enabled = None

    def post_fit(self) -> None:
        self._restore()

    def on_interrupt(self) -> None:
        self._restore()
