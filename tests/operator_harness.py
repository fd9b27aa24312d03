"""Run the real operator (kopf) in a background thread against the Kubernetes API emulator."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from dream_operator import crd
from dream_operator.controller import ControllerSettings
from dream_operator.handlers import OperatorConfig, run_operator

FAST = ControllerSettings(workers=4, resync_seconds=2.0, progress_interval_seconds=0.5,
                          force_delete_after_seconds=0.5, retry_seconds=0.3)


class OperatorThread:
    """``dream-operator run`` in a thread; ``stop()`` ends it like a SIGTERM would."""

    def __init__(self, kubeconfig: Path, settings: ControllerSettings = FAST, identity: str = "op-0",
                 lease_duration_seconds: int = 2, **overrides: Any) -> None:
        self.config = OperatorConfig(settings=replace(settings, **overrides), kubeconfig=str(kubeconfig),
                                     identity=identity, lease_duration_seconds=lease_duration_seconds,
                                     lease_renew_seconds=0.3)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"operator-{identity}", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(run_operator(self.config, stop_flag=self._stop, ready_flag=self._ready))
        except BaseException as error:  # surfaced by the tests through .error
            self.error = error

    def start(self) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError(f"operator did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "operator did not stop"

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def crd_manifest() -> dict[str, Any]:
    return crd.dreamtrainjob_crd()
