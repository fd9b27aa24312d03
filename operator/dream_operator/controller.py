"""The act side of the operator: a work queue of job keys and the one function that reconciles a
key (read the job, decide with :func:`reconcile`, write the status, apply the actions).

kopf feeds the queue (job, pod and node events) and keeps the indexes of pods and nodes; the
controller only acts while :class:`LeaderElection` says this replica leads. One key is never
reconciled by two workers at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes.client.rest import ApiException

from . import metrics
from .api import Phase
from .kube import CONFLICT, NOT_FOUND, Kube
from .observe import pod_view
from .reconcile import (
    CreatePod,
    CreateService,
    Decision,
    DeleteJob,
    DeletePod,
    Settings,
    reconcile,
    with_progress,
)

log = logging.getLogger(__name__)
Key = tuple[str, str]
COMPONENT = "dream-operator"


@dataclass(frozen=True)
class ControllerSettings(Settings):
    workers: int = 16
    resync_seconds: float = 60.0
    """Every job is reconciled at least this often, whatever the events say."""
    progress_interval_seconds: float = 15.0
    retry_seconds: float = 2.0
    expectation_seconds: float = 30.0


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def status_dict(decision: Decision) -> dict[str, Any]:
    return decision.status.model_dump(by_alias=True, mode="json", exclude_none=True)


class Controller:
    def __init__(self, kube: Kube, settings: ControllerSettings,
                 pods: Callable[[Key], Iterable[dict[str, Any]]],
                 nodes: Callable[[], Iterable[dict[str, Any]]],
                 jobs: Callable[[], Iterable[Key]],
                 leading: asyncio.Event) -> None:
        self.kube, self.settings = kube, settings
        self._pods, self._nodes, self._jobs, self.leading = pods, nodes, jobs, leading
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._busy: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._last_progress: dict[Key, float] = {}
        self._expected: dict[tuple[str, str], float] = {}
        """Pods this replica created and has not yet seen in the index (namespace, name) ->
        monotonic time: the index lags behind our own writes, and recreating them only costs
        rejected requests. An expectation not met within ``expectation_seconds`` is dropped."""
        self._http: aiohttp.ClientSession | None = None

    # --- queue ---------------------------------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        if key in self._busy:
            self._dirty.add(key)  # look again once the running reconcile ends
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def enqueue_after(self, key: Key, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + seconds
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= due:
            return  # an earlier wake-up is already set
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(due, self.enqueue, key)

    def forget(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._last_progress.pop(key, None)

    async def run(self) -> None:
        """Workers plus a periodic resync of every job; runs until cancelled."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.settings.workers):
                    group.create_task(self._worker())
                group.create_task(self._resync())
        finally:
            await self._http.close()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            for key in list(self._jobs()):
                self.enqueue(key)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            await self.leading.wait()
            self._busy.add(key)
            started = time.perf_counter()
            try:
                await self.reconcile(key)
                metrics.RECONCILES.labels(result="ok").inc()
            except Exception as error:
                metrics.RECONCILES.labels(result="error").inc()
                log.warning("reconciling %s/%s failed, retrying: %r", *key, error)
                self.enqueue_after(key, self.settings.retry_seconds)
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
                self._busy.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.enqueue(key)

    # --- one reconcile ----------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        namespace, name = key
        job = await self.kube.get_job(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            self.forget(key)
            return
        now = datetime.now(UTC)
        pods = list(self._pods(key))
        for pod in pods:
            self._expected.pop((namespace, pod["metadata"]["name"]), None)
        decision = reconcile(job, pods, list(self._nodes()), now, self.settings)
        if decision.status.phase == Phase.RUNNING:
            await self._read_progress(key, job, decision, now)

        old = job.get("status") or {}
        new = status_dict(decision)
        if new != old:
            try:
                await self.kube.patch_job_status(job, merge_patch(old, new))
            except ApiException as error:
                if error.status == NOT_FOUND:
                    self.forget(key)  # deleted while we decided
                    return
                if error.status != CONFLICT:
                    raise
                # Our view was stale (or another writer won): decide again on a fresh read.
                metrics.CONFLICTS.inc()
                self.enqueue_after(key, 0.2)
                return
            if old.get("phase") != new.get("phase"):
                metrics.TRANSITIONS.labels(phase=new.get("phase", "")).inc()
            if new.get("restarts", 0) > old.get("restarts", 0):
                metrics.RESTARTS.inc()
        # The status is written; now everything else at once (each action is idempotent).
        await asyncio.gather(
            *(self._post(job, event, now) for event in decision.events),
            *(self._apply(namespace, job, action) for action in decision.actions),
        )
        if decision.requeue_after is not None:
            self.enqueue_after(key, decision.requeue_after + 0.05)

    async def _post(self, job: dict[str, Any], event: Any, now: datetime) -> None:
        try:
            await self.kube.post_event(job, event.type, event.reason, event.message, now, COMPONENT)
        except ApiException as error:  # an Event is informative; never fail a reconcile on it
            log.warning("posting event for %s: %s", job["metadata"]["name"], error.reason)

    async def _apply(self, namespace: str, job: dict[str, Any], action: Any) -> None:
        if isinstance(action, CreatePod):
            pod = (namespace, action.manifest["metadata"]["name"])
            since = self._expected.get(pod)
            if since is not None and time.monotonic() - since < self.settings.expectation_seconds:
                return
            await self.kube.create_pod(namespace, action.manifest)
            self._expected[pod] = time.monotonic()
            metrics.PODS_CREATED.inc()
        elif isinstance(action, CreateService):
            await self.kube.create_service(namespace, action.manifest)
        elif isinstance(action, DeletePod):
            await self.kube.delete_pod(namespace, action.name, action.grace_seconds)
            metrics.PODS_DELETED.labels(force=str(action.grace_seconds == 0).lower()).inc()
        elif isinstance(action, DeleteJob):
            meta = job["metadata"]
            await self.kube.delete_job(namespace, meta["name"], meta["uid"])

    async def _read_progress(self, key: Key, job: dict[str, Any], decision: Decision,
                             now: datetime) -> None:
        """Poll rank 0's progress endpoint at most every ``progress_interval_seconds``."""
        interval = self.settings.progress_interval_seconds
        decision.wake_in(interval)
        last = self._last_progress.get(key)
        if last is not None and time.monotonic() - last < interval * 0.9:
            return
        generation = decision.status.group_generation
        rank0 = [v for v in map(pod_view, self._pods(key))
                 if v is not None and v.rank == 0 and v.generation == generation
                 and v.phase == "Running" and v.pod_ip]
        if not rank0 or self._http is None:
            return
        self._last_progress[key] = time.monotonic()
        url = f"http://{rank0[0].pod_ip}:{self.settings.progress_port}/progress"
        try:
            async with self._http.get(url) as response:
                report = await response.json() if response.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return  # not serving yet (still starting) or gone; the next poll will tell
        decision.status = with_progress(decision.status, report, now)

