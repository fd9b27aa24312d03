"""ProgressServerCallback: an HTTP endpoint on rank 0 that reports step, loss and checkpoints.

The operator polls ``GET /progress`` (JSON) to fill the job's status; Prometheus may scrape
``GET /metrics``; ``GET /healthz`` answers ``ok``. Plain HTTP from the standard library, so it
needs no credentials and no extra dependency.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from dream_trainer.callbacks.callback import RankZeroCallback
from dream_trainer.contract import JOB_NAME, PROGRESS_PORT, RESTART_COUNT, TERMINATION_LOG

logger = logging.getLogger(__name__)

_GAUGES = (
    ("dream_trainer_step", "step", "Optimizer steps done (global)."),
    ("dream_trainer_epoch", "epoch", "Current epoch (epochs completed)."),
    ("dream_trainer_loss", "loss", "Mean training loss on rank 0 over the last steps."),
    ("dream_trainer_restart_count", "restart_count", "Gang restarts of the job's pod group."),
    ("dream_trainer_last_update_timestamp_seconds", "updated",
     "Unix time of the last progress update."),
)


def prometheus_text(progress: dict[str, Any]) -> str:
    """The progress snapshot as Prometheus text exposition (version 0.0.4): one gauge per value,
    labelled with the job's name."""
    job = str(progress.get("job") or "")
    job = job.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    lines = []
    for metric, key, help_text in _GAUGES:
        value = progress.get(key)
        shown = "NaN" if value is None else repr(float(value))
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge",
                  f'{metric}{{job="{job}"}} {shown}']
    return "\n".join(lines) + "\n"


class ProgressServerCallback(RankZeroCallback):
    """Serves the training progress over HTTP from global rank 0 (other ranks do nothing).

    ``port`` defaults to ``$DREAM_PROGRESS_PORT`` (the trainer adds this callback by itself when
    that variable is set), else 0; port 0 picks a free port, which :attr:`port` then holds. The
    server runs in a daemon thread from ``pre_configure`` until the end of ``fit()`` (or an error).

    ``GET /progress`` returns :meth:`snapshot`. ``loss`` is the mean, on rank 0, of the training
    losses since the last refresh; it is refreshed every ``every_n_steps`` optimizer steps with a
    non-blocking copy to the host (no per-step device sync) and exactly at the end of ``fit()``.
    It is rank 0's share of the batch: a collective from a rank-0-only callback would hang, and
    ``ProgressCallback`` prints the mean over data-parallel ranks. ``last_checkpoint`` is the URL
    of the newest checkpoint a checkpoint callback of this trainer committed (or resumed from).

    Thread safety: the training thread builds a new snapshot dict and swaps the reference; the
    request threads only read the reference, so they never see a half-updated snapshot.
    """

    def __init__(self, port: int | None = None, every_n_steps: int = 10) -> None:
        if port is None:
            port = int(os.environ.get(PROGRESS_PORT) or 0)
        if not 0 <= port <= 65535:
            raise ValueError(f"port={port}: must be in 0..65535 (0 picks a free port)")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: must be >= 1")
        self.requested_port = port
        self.every_n_steps = every_n_steps
        self.port: int | None = None
        """The port actually served (set when the server starts; None when not serving)."""
        self._server: ThreadingHTTPServer | None = None
        self._snapshot: dict[str, Any] = {}
        self._checkpointers: list[Any] = []
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._copy: tuple[torch.Tensor, torch.cuda.Event] | None = None
        self._loss: float | None = None

    # ----------------------------------------------------------------- state
    def snapshot(self) -> dict[str, Any]:
        """The progress as served by ``GET /progress`` (safe to call from any thread)::

            {"step": int, "epoch": int, "loss": float | None, "last_checkpoint": str | None,
             "restart_count": int, "job": str | None, "phase": "setup" | "training" |
             "validating" | "finished", "updated": float}
        """
        committed = [c for c in (getattr(cb, "last_committed", None)
                                 for cb in self._checkpointers) if c]
        return {**self._snapshot, "last_checkpoint": committed[-1] if committed else None}

    def _publish(self, phase: str | None = None, step: int | None = None) -> None:
        trainer = self.trainer
        self._snapshot = {
            "step": trainer.global_step if step is None else step,
            "epoch": trainer.current_epoch,
            "loss": self._loss,
            "restart_count": int(os.environ.get(RESTART_COUNT) or 0),
            "job": os.environ.get(JOB_NAME),
            "phase": phase or self._snapshot.get("phase", "setup"),
            "updated": time.time(),
        }

    def _refresh_loss(self, wait: bool) -> None:
        """Move the mean loss since the last refresh towards :attr:`_loss`: directly on CPU, by a
        non-blocking device-to-host copy elsewhere, read once its event has completed (or now,
        when ``wait``)."""
        if self._loss_count and self._loss_sum is not None:
            mean = self._loss_sum / self._loss_count
            self._loss_sum, self._loss_count = None, 0
            if mean.device.type == "cuda":
                host = mean.to("cpu", non_blocking=True)  # lands in pinned memory
                event = torch.cuda.Event()
                event.record()
                self._copy = (host, event)
            else:
                self._loss = _finite(float(mean))
        if self._copy is not None and (wait or self._copy[1].query()):
            self._copy[1].synchronize()
            self._loss = _finite(float(self._copy[0]))
            self._copy = None

    # ----------------------------------------------------------------- hooks
    def pre_configure(self) -> None:
        self._checkpointers = [cb for cb in self.trainer.callbacks.values()
                               if hasattr(cb, "last_committed")]
        self._publish("setup")
        self._start()

    def pre_train_epoch(self) -> None:
        self._publish("training")

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        loss = result.get("loss") if isinstance(result, dict) else None
        if isinstance(loss, (int, float)) and not isinstance(loss, bool):
            loss = torch.tensor(float(loss))
        if isinstance(loss, torch.Tensor) and not isinstance(loss, DTensor):
            value = loss.detach().float()  # summed on its device: no sync here
            self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
            self._loss_count += 1
        if self.trainer.is_accumulating_gradients:
            return
        step = self.trainer.global_step + 1  # the counters advance after this hook
        if step % self.every_n_steps == 0 or self._copy is not None:
            self._refresh_loss(wait=False)
        self._publish("training", step)

    def pre_validation_epoch(self) -> None:
        self._publish("validating")

    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        self._publish("training")

    def post_fit(self) -> None:
        self._refresh_loss(wait=True)
        self._publish("finished")
        self._stop()
        self._write_termination_log()

    def _write_termination_log(self) -> None:
        """The final snapshot to ``$DREAM_TERMINATION_LOG`` (the container's termination message):
        the operator reads it from the pod's status once nobody serves ``/progress`` any more."""
        path = os.environ.get(TERMINATION_LOG)
        if not path:
            return
        try:
            with open(path, "w") as file:
                json.dump(self.snapshot(), file)
        except OSError as error:  # reporting progress must not fail a finished training
            logger.warning("cannot write the final progress to %s: %s", path, error)

    def on_interrupt(self) -> None:
        self._stop()

    # ----------------------------------------------------------------- server
    def _start(self) -> None:
        self._stop()
        callback = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                path = self.path.split("?", 1)[0].rstrip("/")
                if path == "/progress":
                    body, kind = json.dumps(callback.snapshot()), "application/json"
                elif path == "/metrics":
                    body = prometheus_text(callback.snapshot())
                    kind = "text/plain; version=0.0.4; charset=utf-8"
                elif path == "/healthz":
                    body, kind = "ok", "text/plain; charset=utf-8"
                else:
                    self.send_error(404, "try /progress, /metrics or /healthz")
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # polled every few seconds: no access log

        try:
            server = ThreadingHTTPServer(("0.0.0.0", self.requested_port), Handler)
        except OSError as err:  # reporting progress must not stop the training
            logger.warning("progress endpoint not started on port %d: %s",
                           self.requested_port, err)
            return
        server.daemon_threads = True
        self._server, self.port = server, server.server_address[1]
        threading.Thread(target=server.serve_forever, name="dream-progress-server",
                         daemon=True).start()
        logger.info("progress endpoint on http://0.0.0.0:%d/progress", self.port)

    def _stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server, self.port = None, None


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: a diverged loss is reported as null."""
    return value if math.isfinite(value) else None
