"""ProgressBarCallback: a progress bar on rank 0, redrawn in place on a terminal.

On a TTY the bar is rewritten with ``\\r`` after every ``refresh_every_n_steps`` optimizer steps::

    [=========>          ] 45/100  45% | epoch 0 | loss 2.4312 | 12,655 tok/s | ETA 0m12s

Anywhere else (a pod's log, a file, a pipe) carriage returns would pile up into one huge line,
so it prints a full line every ``every_n_steps`` steps instead, like
:class:`~dream_trainer.callbacks.ProgressCallback`, whose accounting it shares
(:class:`~dream_trainer.callbacks.progress.ProgressMeter`).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from typing import Any, TextIO

from dream_trainer.callbacks.callback import Callback
from dream_trainer.callbacks.progress import (
    ProgressMeter,
    format_duration,
    progress_line,
    summary_line,
    validation_line,
)
from dream_trainer.configs.errors import require_bool, require_int


def render_bar(done: int, total: int, width: int) -> str:
    """``[=====>    ]``: ``width`` characters between the brackets, ASCII only (any stream
    encoding can print it)."""
    done = max(0, min(done, total))
    filled = width if total <= 0 else done * width // total
    if filled >= width:
        return "[" + "=" * width + "]"
    return "[" + "=" * filled + ">" + " " * (width - filled - 1) + "]"


class ProgressBarCallback(Callback):
    """A progress bar with step/total, loss, tokens/s and ETA, printed by global rank 0.

    Args:
        every_n_steps: how often (in optimizer steps) the loss is averaged over the steps since
            the last average and over data-parallel ranks. That average is a collective with a
            device-to-host copy, so it is not done every step; the bar shows the latest one.
            Without a TTY this is also how often a line is printed.
        refresh_every_n_steps: how often the bar is redrawn on a TTY (host-side only: the step
            count, throughput and ETA cost no device sync).
        stream: where to print (default ``sys.stdout``, looked up when printing).
        width: characters of the bar itself.
        tty: force the TTY (True) or line (False) mode; None asks ``stream.isatty()``.
        rate_window: the bar's tokens/s is measured over this many most recent steps.

    Every rank runs the hooks (the loss average needs them all); only global rank 0 prints.
    After training it prints the same ``done: ...`` summary as ``ProgressCallback`` and keeps it
    in :attr:`summary`.
    """

    def __init__(self, every_n_steps: int = 10, refresh_every_n_steps: int = 1,
                 stream: TextIO | None = None, width: int = 30, tty: bool | None = None,
                 rate_window: int = 20) -> None:
        for name, value in (("every_n_steps", every_n_steps),
                            ("refresh_every_n_steps", refresh_every_n_steps),
                            ("width", width), ("rate_window", rate_window)):
            require_int(f"ProgressBarCallback.{name}", value, minimum=1)
        if tty is not None:
            require_bool("ProgressBarCallback.tty", tty)
        self.every_n_steps = every_n_steps
        self.refresh_every_n_steps = refresh_every_n_steps
        self.stream = stream
        self.width = width
        self.tty = tty
        self.rate_window = rate_window
        self.meter = ProgressMeter()
        self.summary: dict[str, float] = {}
        self._drawn = 0  # characters of the bar currently on the line (0: none)

    # ----------------------------------------------------------------- output
    @property
    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def _is_tty(self) -> bool:
        if self.tty is not None:
            return self.tty
        isatty = getattr(self._out, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # a closed stream
            return False

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def _println(self, text: str) -> None:
        """Print a whole line; on a TTY, over the bar, which is redrawn after it."""
        if not self.trainer.world.is_global_zero:
            return
        if self._drawn:
            self._write("\r" + " " * self._drawn + "\r")
            self._drawn = 0
        self._write(text + "\n")

    def _columns(self) -> int:
        return shutil.get_terminal_size((120, 24)).columns

    # ----------------------------------------------------------------- rendering
    def _rate(self, now: float) -> float:
        """Global tokens/s over the last ``rate_window`` steps (since the start before that)."""
        if len(self._marks) >= 2:
            (t0, n0), (t1, n1) = self._marks[0], self._marks[-1]
            return (n1 - n0) / max(t1 - t0, 1e-9)
        return self.meter.tokens / max(now - self.meter.started, 1e-9)

    def bar_text(self, step: int, now: float | None = None) -> str:
        """The bar as drawn at ``step``, without the carriage return."""
        now = time.perf_counter() if now is None else now
        meter = self.meter
        total = meter.total
        loss = "-" if meter.last_loss != meter.last_loss else f"{meter.last_loss:.4f}"  # nan: -
        eta = meter.eta(step, now)
        if total:
            head = (f"{render_bar(step, total, self.width)} {step}/{total} "
                    f"{100 * step // total:3d}%")
        else:
            head = f"step {step}"
        tail = f" | ETA {format_duration(eta)}" if eta is not None else ""
        return (f"{head} | epoch {self.trainer.current_epoch} | loss {loss} | "
                f"{self._rate(now):,.0f} tok/s{tail}")

    def _redraw(self, step: int) -> None:
        if not self.trainer.world.is_global_zero:
            return
        text = self.bar_text(step)[: max(self._columns() - 1, 20)]  # a wrapped line can't be \r-ed
        pad = " " * max(self._drawn - len(text), 0)
        self._write("\r" + text + pad)
        self._drawn = len(text)

    # ----------------------------------------------------------------- hooks
    def pre_fit(self) -> None:
        self.meter.start(self.trainer)
        self._tty_mode = self.trainer.world.is_global_zero and self._is_tty()
        self._marks: deque[tuple[float, int]] = deque(maxlen=self.rate_window + 1)
        self._drawn = 0

    def pre_train_step(self, batch: Any, batch_idx: int) -> None:
        self.meter.count_batch(batch)

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        self.meter.add_loss(result)
        if self.trainer.is_accumulating_gradients:
            return
        step = self.trainer.global_step + 1  # the counters advance after this hook
        now = time.perf_counter()
        self._marks.append((now, self.meter.tokens))
        if step % self.every_n_steps == 0:  # the same steps on every rank: a collective
            self.meter.reduce_loss()
            if not self._tty_mode:
                meter = self.meter
                self._println(progress_line(step, meter.total, self.trainer.current_epoch,
                                            meter.last_loss, meter.window_rate(now),
                                            meter.eta(step, now)))
            self.meter.end_window(now)
        if self._tty_mode and (step % self.refresh_every_n_steps == 0
                               or step % self.every_n_steps == 0 or step == self.meter.total):
            self._redraw(step)

    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        if result and not self.trainer.sanity_checking:
            self._println(validation_line(self.trainer.global_step, result))
            if self._tty_mode and self.trainer.global_step:
                self._redraw(self.trainer.global_step)

    def post_fit(self) -> None:
        step = self.trainer.global_step
        if self.meter.has_pending_loss:
            self.meter.reduce_loss()
            now = time.perf_counter()
            if self._tty_mode:
                self._redraw(step)
            else:
                meter = self.meter
                self._println(progress_line(step, meter.total, self.trainer.current_epoch,
                                            meter.last_loss, meter.window_rate(now),
                                            meter.eta(step, now)))
        if self._drawn and self.trainer.world.is_global_zero:
            self._write("\n")  # keep the final bar on screen
            self._drawn = 0
        self.summary = self.meter.summary()
        self._println(summary_line(self.summary))

    def on_interrupt(self) -> None:
        if self._drawn and self.trainer.world.is_global_zero:
            self._write("\n")  # the traceback starts on a line of its own
            self._drawn = 0
