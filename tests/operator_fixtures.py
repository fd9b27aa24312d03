"""Raw API objects for the operator's pure-function tests (as the API server returns them)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from dream_operator import api
from dream_operator.group import LABEL_GENERATION, LABEL_JOB, LABEL_RANK
from hypothesis import strategies as st

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
    if deleting_at is not None:  # deleted with grace 0 at that time
        meta["deletionTimestamp"] = ts(deleting_at)
        meta["deletionGracePeriodSeconds"] = 0
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}, "status": status}


def node(name: str, ready: bool = True, since: datetime = T0 - timedelta(hours=1)) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"conditions": [
        {"type": "Ready", "status": "True" if ready else "Unknown", "lastTransitionTime": ts(since)}]}}


def with_status(body: dict[str, Any], status: Any) -> dict[str, Any]:
    """``body`` carrying a decided status (as the operator would have written it)."""
    out = copy.deepcopy(body)
    out["status"] = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    return out


# --- generated bad manifests ---------------------------------------------------------------

_VALID = job(name="fuzz", nodes={"count": 2})

# Where in the spec to break things, and with what.
PATHS = [
    ("image",), ("command",), ("args",), ("env",), ("nodes",), ("nodes", "count"), ("nodes", "min"),
    ("nodes", "max"), ("nprocPerNode",), ("checkpoint",), ("checkpoint", "uri"),
    ("restartPolicy", "maxRestarts"), ("restartPolicy", "backoffSeconds"),
    ("runPolicy", "activeDeadlineSeconds"), ("runPolicy", "cleanPodPolicy"), ("runPolicy", "suspend"),
    ("podTemplate", "nodeSelector"), ("resources", "limits"), ("wandb", "mode"), ("bogusField",),
    ("nodes", "bogus"),
]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=False),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3)),
    max_leaves=6)
SPECIAL = st.sampled_from([0, -1, 10**12, "", "many", [], {}, {"min": 5, "max": 2}, {"count": 1, "min": 1}])


@st.composite
def broken_manifests(draw: st.DrawFn) -> dict[str, Any]:
    body = copy.deepcopy(_VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node_ = body["spec"]
        for key in path[:-1]:
            if not isinstance(node_.get(key), dict):
                node_[key] = {}
            node_ = node_[key]
        if draw(st.booleans()) and path[-1] in node_:
            del node_[path[-1]]
        else:
            node_[path[-1]] = copy.deepcopy(draw(st.one_of(json_values, SPECIAL)))  # no shared objects
    return body


