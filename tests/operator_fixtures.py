"""Raw API objects for the operator's pure-function tests (as the API server returns them)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from dream_operator import api
from dream_operator.group import LABEL_GENERATION, LABEL_JOB, LABEL_RANK

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ts(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def job(name: str = "llama", nodes: dict[str, int] | None = None, status: dict[str, Any] | None = None,
        **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": "default", "uid": "uid-1", "generation": 1,
                     "resourceVersion": "10"},
        "spec": {"image": "dream:latest", "command": ["train.py"], "nodes": nodes or {"count": 2},
                 "nprocPerNode": 2, "restartPolicy": {"maxRestarts": 3, "backoffSeconds": 10},
                 **spec},
    }
    if status is not None:
        body["status"] = status
    return body


def pod(job_name: str, generation: int, rank: int, phase: str = "Running", node: str | None = "n0",
        deleting_at: datetime | None = None, exit_code: int | None = None,
        reason: str | None = None, ip: str | None = "10.0.0.1") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if phase == "Running":
        status["conditions"] = [{"type": "Ready", "status": "True"}]
        status["podIP"] = ip
    if exit_code is not None:
        status["containerStatuses"] = [
            {"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}]
    if reason:
        status["reason"] = reason
    meta: dict[str, Any] = {
        "name": f"{job_name}-g{generation}-{rank}", "namespace": "default",
        "labels": {LABEL_JOB: job_name, LABEL_GENERATION: str(generation), LABEL_RANK: str(rank)},
    }
    if deleting_at is not None:
        meta["deletionTimestamp"] = ts(deleting_at)
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}, "status": status}


def node(name: str, ready: bool = True, since: datetime = T0 - timedelta(hours=1)) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"conditions": [
        {"type": "Ready", "status": "True" if ready else "Unknown", "lastTransitionTime": ts(since)}]}}


def with_status(body: dict[str, Any], status: Any) -> dict[str, Any]:
    """``body`` carrying a decided status (as the operator would have written it)."""
    out = copy.deepcopy(body)
    out["status"] = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    return out
