"""Decide, from what is observed, what to do and what the job's status is (pure).

``reconcile(job, pods, nodes, now)`` is level-based: it looks only at the job (spec and the
status it wrote last time), the job's pods, the nodes and the clock, so running it twice, late,
or after an operator restart gives the same answer. Creating a pod that exists or deleting one
that is gone is harmless, and the status is written with the job's resourceVersion as a
precondition, so a decision made on a stale view is rejected instead of applied.

The one stateful choice, the group generation, lives in the status: a failure in generation g
moves the status to g+1 (counting one restart) and every pod of an older generation is deleted
before the new group is created after its backoff.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from . import api
from .api import ConditionType as C
from .api import Phase, Reason
from .group import GroupSettings, desired_group, reserved_env_problems
from .observe import NodeView, PodView, node_view, pod_view


@dataclass(frozen=True)
class Settings(GroupSettings):
    """Operator-wide knobs of reconciliation."""

    node_lost_after_seconds: float = 0.0
    """How long a node may be NotReady before its pods count as lost (the node controller
    already waits ~40 s before marking a node NotReady)."""
    force_delete_after_seconds: float = 30.0
    """How long after its deletion was requested a pod on a lost node may stay Terminating before
    it is force-deleted (its kubelet cannot confirm; the group cannot restart while it exists)."""


# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatePod:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class CreateService:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class DeletePod:
    name: str
    grace_seconds: int | None = None
    """None: the pod's own grace period; 0: force deletion."""


@dataclass(frozen=True)
class DeleteJob:
    pass


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


Action = CreatePod | CreateService | DeletePod | DeleteJob


@dataclass
class Decision:
    status: api.DreamTrainJobStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    """Seconds until a timer (backoff, deadline, TTL, force deletion) needs another look."""

    def wake_in(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


# --- status helpers ---------------------------------------------------------------------------


def set_condition(conditions: list[api.Condition], type_: C, status: bool, reason: str,
                  message: str, now: datetime) -> list[api.Condition]:
    """Conditions with ``type_`` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    out, found = [], False
    for c in conditions:
        if c.type == type_:
            found = True
            when = c.last_transition_time if c.status == value else now
            c = api.Condition(type=type_, status=value, reason=reason, message=message,
                              last_transition_time=when)
        out.append(c)
    if not found:
        out.append(api.Condition(type=type_, status=value, reason=reason, message=message,
                                 last_transition_time=now))
    return out


def _with(status: api.DreamTrainJobStatus, **changes: Any) -> api.DreamTrainJobStatus:
    return status.model_copy(update=changes)


def _cond(status: api.DreamTrainJobStatus, type_: C, value: bool, reason: str, message: str,
          now: datetime) -> api.DreamTrainJobStatus:
    return _with(status, conditions=set_condition(status.conditions, type_, value, reason, message, now))


def backoff_seconds(policy: api.RestartPolicy, restarts: int) -> float:
    """Delay before the group of restart number ``restarts`` (1-based) is created."""
    if restarts <= 0 or policy.backoff_seconds == 0:
        return 0.0
    return float(min(policy.backoff_seconds * 2 ** min(restarts - 1, 30), policy.max_backoff_seconds))


# --- the decision -----------------------------------------------------------------------------


def parse_status(raw: dict[str, Any] | None) -> api.DreamTrainJobStatus:
    """The status the operator wrote last; a hand-edited, unreadable one starts afresh."""
    try:
        return api.DreamTrainJobStatus.model_validate(raw or {})
    except ValidationError:
        return api.DreamTrainJobStatus()


def reconcile(job: dict[str, Any], pods: list[dict[str, Any]], nodes: list[dict[str, Any]],
              now: datetime, settings: Settings = Settings()) -> Decision:
    """What to do about ``job`` given its observed ``pods`` and the cluster's ``nodes``."""
    decision = _reconcile(job, pods, nodes, now, settings)
    views = (v for v in map(pod_view, pods) if v is not None)
    decision.status = with_final_progress(decision.status, views)
    return decision


def _reconcile(job: dict[str, Any], pods: list[dict[str, Any]], nodes: list[dict[str, Any]],
               now: datetime, settings: Settings) -> Decision:
    status = parse_status(job.get("status"))
    views = sorted((v for v in map(pod_view, pods) if v is not None), key=lambda v: (v.generation, v.rank))
    node_views = {n.name: n for n in map(node_view, nodes)}
    meta = job.get("metadata", {})
    status = _with(status, observed_generation=int(meta.get("generation") or 0))

    if status.phase in (Phase.SUCCEEDED, Phase.FAILED):
        decision = Decision(status)
        _finished(job, views, now, decision)
        return decision

    decision = Decision(status)
    if not any(c.type == C.CREATED for c in status.conditions):
        text = "DreamTrainJob accepted"
        status = _cond(status, C.CREATED, True, Reason.JOB_CREATED, text, now)
        decision.status = _with(status, start_time=status.start_time or now)
        decision.events.append(Event("Normal", Reason.JOB_CREATED, text))

    parsed, problem = _parse(job)
    if parsed is None:
        _fail(decision, Reason.INVALID_SPEC, problem, now, job, views)
        return decision

    spec = parsed.spec
    if spec.run_policy.suspend:
        _suspend(decision, views, now)
        return decision
    if decision.status.phase == Phase.SUSPENDED:
        _resume(decision, now)

    deadline = spec.run_policy.active_deadline_seconds
    if deadline is not None and decision.status.start_time is not None:
        remaining = (decision.status.start_time + timedelta(seconds=deadline) - now).total_seconds()
        if remaining <= 0:
            _fail(decision, Reason.DEADLINE_EXCEEDED,
                  f"the job ran longer than spec.runPolicy.activeDeadlineSeconds={deadline}",
                  now, job, views)
            return decision
        decision.wake_in(remaining)

    generation = decision.status.group_generation
    old = [v for v in views if v.generation != generation]
    current = [v for v in views if v.generation == generation]
    _delete_pods(decision, old, node_views, now, settings)

    failures = [f for v in current if (f := _failure(v, node_views, now, settings, decision))]
    if failures:
        _on_failures(decision, parsed, current, failures, node_views, now, settings)
        return decision

    _run_group(decision, parsed, current, bool(old), now, settings)
    return decision


def _parse(job: dict[str, Any]) -> tuple[api.DreamTrainJob | None, str]:
    try:
        parsed = api.parse(api.DreamTrainJob, {**job, "status": {}})
    except ValidationError as error:
        return None, api.describe_validation_error(error)
    problems = reserved_env_problems(parsed)
    if len(parsed.metadata.name) > api.MAX_JOB_NAME_LENGTH:
        problems.append(f"metadata.name: {parsed.metadata.name!r} is longer than "
                        f"{api.MAX_JOB_NAME_LENGTH} characters; choose a shorter name")
    if problems:
        return None, "; ".join(problems)
    return parsed, ""


def _node_lost(view: PodView, nodes: dict[str, NodeView], now: datetime, settings: Settings,
               decision: Decision) -> bool:
    if view.node_name is None:
        return False
    node = nodes.get(view.node_name)
    if node is None:
        return True  # the Node object was deleted: its pods will never report again
    if node.ready:
        return False
    lost_at = (node.since or now) + timedelta(seconds=settings.node_lost_after_seconds)
    if lost_at <= now:
        return True
    decision.wake_in((lost_at - now).total_seconds())
    return False


def _failure(view: PodView, nodes: dict[str, NodeView], now: datetime, settings: Settings,
             decision: Decision) -> tuple[PodView, Reason, str] | None:
    """Why this pod of the current group can no longer take part, or None."""
    if view.phase == "Failed":
        if view.reason == "Evicted":
            return view, Reason.WORKER_EVICTED, f"pod {view.name} was evicted"
        if view.exit_code == 143:
            return view, Reason.WORKER_PREEMPTED, f"pod {view.name} was stopped (SIGTERM, exit 143)"
        detail = f"exit code {view.exit_code}" if view.exit_code is not None else "no exit code"
        if view.container_reason:
            detail += f", {view.container_reason}"
        return view, Reason.WORKER_FAILED, f"pod {view.name} failed ({detail})"
    if view.phase != "Succeeded" and _node_lost(view, nodes, now, settings, decision):
        return view, Reason.NODE_LOST, f"node {view.node_name} of pod {view.name} is not ready"
    if view.terminating and view.phase != "Succeeded":
        return view, Reason.WORKER_DELETED, f"pod {view.name} is being deleted"
    return None


def _delete_pods(decision: Decision, views: list[PodView], nodes: dict[str, NodeView],
                 now: datetime, settings: Settings) -> None:
    """Delete ``views``; force the ones stuck Terminating on a lost node past their deadline."""
    for view in views:
        if not view.terminating:
            decision.actions.append(DeletePod(view.name))
            continue
        on_lost_node = view.node_name is not None and not (
            (n := nodes.get(view.node_name)) is not None and n.ready)
        if not on_lost_node:
            continue  # its kubelet is finishing it
        # Its kubelet will never run the grace period: force it a fixed time after the request.
        force_at = view.deletion_requested + timedelta(seconds=settings.force_delete_after_seconds)  # type: ignore[operator]
        if force_at <= now:
            decision.actions.append(DeletePod(view.name, grace_seconds=0))
        else:
            decision.wake_in((force_at - now).total_seconds())


def _on_failures(decision: Decision, job: api.DreamTrainJob, current: list[PodView],
                 failures: list[tuple[PodView, Reason, str]], nodes: dict[str, NodeView],
                 now: datetime, settings: Settings) -> None:
    spec, status = job.spec, decision.status
    failed = {view.name for view, _, _ in failures}
    healthy = [v for v in current if v.name not in failed and not v.finished]
    rank0_failed = any(view.rank == 0 for view, _, _ in failures)
    message = "; ".join(m for _, _, m in failures)

    if spec.nodes.elastic and not rank0_failed and len(healthy) >= spec.nodes.min_nodes:
        # Elastic: the survivors' agents re-form the group in place; replace the lost pods.
        if any(not view.terminating for view, _, _ in failures):
            decision.events.append(Event("Warning", Reason.REPLACING_NODE,
                                         f"{message}; {len(healthy)} nodes keep training"))
        _delete_pods(decision, [v for v, _, _ in failures], nodes, now, settings)
        _run_group(decision, job, healthy, True, now, settings)
        return

    view, reason, _ = failures[0]
    if rank0_failed and spec.nodes.elastic and len(healthy) >= spec.nodes.min_nodes:
        reason = Reason.RENDEZVOUS_HOST_LOST
    limit = spec.restart_policy.max_restarts
    if status.restarts >= limit:
        _fail(decision, Reason.MAX_RESTARTS_EXCEEDED,
              f"{message}; restarted {status.restarts} times, spec.restartPolicy.maxRestarts={limit}",
              now, job.model_dump(by_alias=True), current)
        return
    restarts = status.restarts + 1
    delay = backoff_seconds(spec.restart_policy, restarts)
    status = _with(status, restarts=restarts, group_generation=status.group_generation + 1,
                   group_start_time=now + timedelta(seconds=delay), phase=Phase.RESTARTING,
                   ready_nodes=0, world_size=0, message=message)
    text = f"{message}; restart {restarts}/{limit} in {delay:.0f}s"
    status = _cond(status, C.RESTARTING, True, reason, text, now)
    status = _cond(status, C.RUNNING, False, reason, text, now)
    decision.status = status
    decision.events.append(Event("Warning", reason, text))
    _delete_pods(decision, current, nodes, now, settings)
    decision.wake_in(delay)


def _run_group(decision: Decision, job: api.DreamTrainJob, current: list[PodView],
               waiting_for_old: bool, now: datetime, settings: Settings) -> None:
    """Create what is missing of the current group and derive the phase from its pods."""
    spec, status = job.spec, decision.status
    nodes = spec.nodes
    succeeded = [v for v in current if v.phase == "Succeeded"]
    active = [v for v in current if not v.finished and not v.terminating]
    # Training is over once enough workers succeeded and none still runs (an elastic job's
    # unscheduled extra pod does not hold it up).
    if len(succeeded) >= nodes.min_nodes and not any(v.phase == "Running" for v in active):
        _succeed(decision, now)
        _finished(job.model_dump(by_alias=True), current, now, decision)
        return

    starts_at = status.group_start_time
    if waiting_for_old or (starts_at is not None and starts_at > now):
        if starts_at is not None and starts_at > now:
            decision.wake_in((starts_at - now).total_seconds())
    elif not succeeded:
        # Once a worker has succeeded training is over; never start a late straggler.
        present = {v.rank for v in current}
        generation = status.group_generation
        service, pods = desired_group(job, generation, settings)
        missing = [p for rank, p in enumerate(pods) if rank not in present]
        if missing:
            decision.actions.append(CreateService(service))
            decision.actions.extend(CreatePod(p) for p in missing)

    running = [v for v in active if v.phase == "Running"]
    ready_nodes = len(running)
    status = _with(status, ready_nodes=ready_nodes, world_size=ready_nodes * spec.nproc_per_node,
                   group_start_time=status.group_start_time or now)
    if ready_nodes >= nodes.max_nodes or (nodes.elastic and ready_nodes >= nodes.min_nodes):
        if status.phase != Phase.RUNNING:
            text = f"{ready_nodes} nodes x {spec.nproc_per_node} processes running (group {status.group_generation})"
            decision.events.append(Event("Normal", Reason.ALL_NODES_RUNNING, text))
            status = _cond(status, C.RUNNING, True, Reason.ALL_NODES_RUNNING, text, now)
            if any(c.type == C.RESTARTING and c.status == "True" for c in status.conditions):
                status = _cond(status, C.RESTARTING, False, Reason.ALL_NODES_RUNNING, text, now)
        status = _with(status, phase=Phase.RUNNING, message=None)
    elif not succeeded:  # while workers finish one by one the phase stays what it was
        status = _with(status, phase=Phase.RESTARTING if status.restarts else Phase.PENDING)
    decision.status = status


def _succeed(decision: Decision, now: datetime) -> None:
    status = decision.status
    text = "all workers exited successfully"
    status = _with(status, phase=Phase.SUCCEEDED, completion_time=now, ready_nodes=0,
                   world_size=0, message=None)
    status = _cond(status, C.SUCCEEDED, True, Reason.SUCCEEDED, text, now)
    status = _cond(status, C.RUNNING, False, Reason.SUCCEEDED, text, now)
    decision.status = status
    decision.events.append(Event("Normal", Reason.SUCCEEDED, text))


def _fail(decision: Decision, reason: Reason, message: str, now: datetime, job: dict[str, Any],
          views: list[PodView]) -> None:
    status = _with(decision.status, phase=Phase.FAILED, completion_time=now, ready_nodes=0,
                   world_size=0, message=message)
    status = _cond(status, C.FAILED, True, reason, message, now)
    for type_ in (C.RUNNING, C.RESTARTING):
        if any(c.type == type_ and c.status == "True" for c in status.conditions):
            status = _cond(status, type_, False, reason, message, now)
    decision.status = status
    decision.events.append(Event("Warning", reason, message))
    _finished(job, views, now, decision)


def _finished(job: dict[str, Any], views: list[PodView], now: datetime, decision: Decision) -> None:
    """Clean up a finished job's pods per cleanPodPolicy and delete the job when its TTL ends."""
    run_policy = ((job.get("spec") or {}).get("runPolicy") or {})
    policy = run_policy.get("cleanPodPolicy", api.CleanPodPolicy.RUNNING)
    for view in views:
        if view.terminating:
            continue
        if policy == api.CleanPodPolicy.ALL or (policy != api.CleanPodPolicy.NONE and not view.finished):
            decision.actions.append(DeletePod(view.name))
    ttl = run_policy.get("ttlSecondsAfterFinished")
    done = decision.status.completion_time
    if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl >= 0 and done is not None:
        remaining = (done + timedelta(seconds=ttl) - now).total_seconds()
        if remaining <= 0:
            decision.actions.append(DeleteJob())
        else:
            decision.wake_in(remaining)


def _suspend(decision: Decision, views: list[PodView], now: datetime) -> None:
    status = decision.status
    if status.phase != Phase.SUSPENDED:
        text = "spec.runPolicy.suspend is true: pods deleted, the job is kept"
        status = _cond(status, C.SUSPENDED, True, Reason.SUSPENDED, text, now)
        if any(c.type == C.RUNNING and c.status == "True" for c in status.conditions):
            status = _cond(status, C.RUNNING, False, Reason.SUSPENDED, text, now)
        decision.events.append(Event("Normal", Reason.SUSPENDED, text))
    decision.status = _with(status, phase=Phase.SUSPENDED, ready_nodes=0, world_size=0)
    for view in views:
        if not view.terminating:
            decision.actions.append(DeletePod(view.name))


def _resume(decision: Decision, now: datetime) -> None:
    """A resumed job starts a new group (a fresh rendezvous) and its deadline clock anew."""
    text = "spec.runPolicy.suspend is false: recreating the group"
    status = _cond(decision.status, C.SUSPENDED, False, Reason.RESUMED, text, now)
    decision.status = _with(status, phase=Phase.PENDING, start_time=now, group_start_time=now,
                            group_generation=status.group_generation + 1)
    decision.events.append(Event("Normal", Reason.RESUMED, text))


# --- progress ---------------------------------------------------------------------------------


def with_progress(status: api.DreamTrainJobStatus, report: Any, now: datetime) -> api.DreamTrainJobStatus:
    """The status updated with rank 0's progress report (see ``dream_trainer.contract``); a
    malformed report changes nothing."""
    if not isinstance(report, dict):
        return status

    def number(key: str, kind: type) -> Any:
        value = report.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return kind(value) if value >= 0 or kind is float else None

    step, epoch, loss = number("step", int), number("epoch", int), number("loss", float)
    if step is None:
        return status
    progress = api.Progress(step=step, epoch=epoch, loss=loss, update_time=now)
    checkpoint = report.get("last_checkpoint")
    changes: dict[str, Any] = {"progress": progress}
    if isinstance(checkpoint, str) and checkpoint:
        changes["last_checkpoint"] = checkpoint
    return _with(status, **changes)


def with_final_progress(status: api.DreamTrainJobStatus,
                        pods: Iterable[PodView]) -> api.DreamTrainJobStatus:
    """The status updated with the final progress that rank 0 of the current group wrote as its
    termination message (nobody serves ``/progress`` after the containers exit). The report's own
    ``updated`` time is the update time, so reconciling again changes nothing."""
    for view in pods:
        if view.generation != status.group_generation or not view.termination_message:
            continue
        try:
            report = json.loads(view.termination_message)
        except ValueError:
            continue
        updated = report.get("updated") if isinstance(report, dict) else None
        if isinstance(updated, (int, float)) and not isinstance(updated, bool) \
                and math.isfinite(updated) and updated > 0:
            return with_progress(status, report, datetime.fromtimestamp(updated, UTC))
    return status
