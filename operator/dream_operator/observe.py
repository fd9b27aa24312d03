"""Read the parts of Pods and Nodes that reconciliation needs out of raw API objects (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .group import CONTAINER, LABEL_GENERATION, LABEL_RANK


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class PodView:
    name: str
    generation: int
    rank: int
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    node_name: str | None
    deletion_time: datetime | None
    """metadata.deletionTimestamp: when the pod should be gone (deletion time + grace)."""
    deletion_grace: int
    """metadata.deletionGracePeriodSeconds."""
    ready: bool
    pod_ip: str | None
    reason: str | None
    """status.reason, e.g. ``Evicted``."""
    exit_code: int | None
    container_reason: str | None
    """The trainer container's termination reason, e.g. ``OOMKilled``, ``Error``."""
    termination_message: str = ""
    """What the trainer container wrote to its terminationMessagePath (rank 0: its final
    progress as JSON, see ``dream_trainer.contract.TERMINATION_LOG``)."""

    @property
    def terminating(self) -> bool:
        return self.deletion_time is not None

    @property
    def deletion_requested(self) -> datetime | None:
        """When deletion was asked for."""
        if self.deletion_time is None:
            return None
        return self.deletion_time - timedelta(seconds=self.deletion_grace)

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def pod_view(pod: dict[str, Any]) -> PodView | None:
    """None for a pod without the labels every worker carries (not one of ours)."""
    meta, status = pod.get("metadata", {}), pod.get("status") or {}
    labels = meta.get("labels") or {}
    try:
        generation, rank = int(labels[LABEL_GENERATION]), int(labels[LABEL_RANK])
    except (KeyError, ValueError):
        return None
    exit_code = container_reason = None
    message = ""
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated:
                exit_code = terminated.get("exitCode")
                container_reason = terminated.get("reason")
                message = terminated.get("message") or ""
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    return PodView(
        name=meta.get("name", ""),
        generation=generation,
        rank=rank,
        phase=status.get("phase") or "Pending",
        node_name=(pod.get("spec") or {}).get("nodeName"),
        deletion_time=parse_time(meta.get("deletionTimestamp")),
        deletion_grace=int(meta.get("deletionGracePeriodSeconds") or 0),
        ready=ready,
        pod_ip=status.get("podIP"),
        reason=status.get("reason"),
        exit_code=exit_code,
        container_reason=container_reason,
        termination_message=message,
    )


@dataclass(frozen=True)
class NodeView:
    name: str
    ready: bool
    since: datetime | None
    """When the Ready condition last changed."""


def node_view(node: dict[str, Any]) -> NodeView:
    meta, status = node.get("metadata", {}), node.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return NodeView(meta.get("name", ""), condition.get("status") == "True",
                            parse_time(condition.get("lastTransitionTime")))
    return NodeView(meta.get("name", ""), False, None)
