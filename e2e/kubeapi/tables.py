"""Server-side printing: the ``meta.k8s.io/v1 Table`` that ``kubectl get`` asks for.

Built-in kinds get the columns of the real server's printers (abridged); custom resources get
their CRD's ``additionalPrinterColumns`` (a small JSONPath subset) or NAME/AGE.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

from .resources import ResourceType

Column = tuple[dict[str, Any], Callable[[dict[str, Any]], Any]]


def parse_time(value: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value)
    except (AttributeError, ValueError):
        return None


def human_duration(seconds: float) -> str:
    """apimachinery's ``duration.HumanDuration`` (what the AGE column shows)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // 24 // 365}y"


def age(timestamp: Any) -> str:
    when = parse_time(timestamp) if isinstance(timestamp, str) else None
    if when is None:
        return "<unknown>"
    return human_duration((dt.datetime.now(dt.UTC) - when).total_seconds())


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Evaluate ``.a.b``, ``.a[0]``, ``.a[*].b``, ``.a[?(@.k=="v")].b`` (CRD column paths)."""
    tokens = re.findall(r"\.([A-Za-z0-9_$-]+)|\[\?\(@\.([A-Za-z0-9_.-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]|\[(\*|-?\d+)\]|\['([^']+)'\]", path.strip().strip("{}"))
    nodes = [obj]
    for name, filter_key, filter_value, index, quoted in tokens:
        out: list[Any] = []
        for node in nodes:
            if name or quoted:
                if isinstance(node, dict) and (name or quoted) in node:
                    out.append(node[name or quoted])
            elif filter_key:
                for item in node if isinstance(node, list) else []:
                    if isinstance(item, dict) and str(_dig(item, filter_key)) == filter_value:
                        out.append(item)
            elif index == "*":
                out.extend(node if isinstance(node, list) else (node.values() if isinstance(node, dict) else []))
            elif isinstance(node, list) and -len(node) <= int(index) < len(node):
                out.append(node[int(index)])
        nodes = out
    return nodes


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _col(name: str, kind: str = "string", priority: int = 0, fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": kind, "format": fmt, "description": name, "priority": priority}


NAME: Column = (_col("Name", fmt="name"), lambda o: o["metadata"]["name"])
AGE: Column = (_col("Age"), lambda o: age(o["metadata"].get("creationTimestamp")))


def _pod_status(pod: dict[str, Any]) -> str:
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated"):
            term = state["terminated"]
            reason = term.get("reason") or f"ExitCode:{term.get('exitCode')}"
    return reason


def _pod_ready(pod: dict[str, Any]) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or [])
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _node_status(node: dict[str, Any]) -> str:
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    text = "Ready" if ready and ready.get("status") == "True" else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        text += ",SchedulingDisabled"
    return text


_BUILTIN: dict[str, list[Column]] = {
    "pods": [
        NAME,
        (_col("Ready"), _pod_ready),
        (_col("Status"), _pod_status),
        (_col("Restarts", "string"), lambda o: str(sum(s.get("restartCount", 0) for s in (o.get("status") or {}).get("containerStatuses") or []))),
        AGE,
        (_col("IP", priority=1), lambda o: (o.get("status") or {}).get("podIP") or "<none>"),
        (_col("Node", priority=1), lambda o: (o.get("spec") or {}).get("nodeName") or "<none>"),
    ],
    "nodes": [NAME, (_col("Status"), _node_status), (_col("Roles"), lambda o: "<none>"), AGE,
              (_col("Version"), lambda o: ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", ""))],
    "namespaces": [NAME, (_col("Status"), lambda o: (o.get("status") or {}).get("phase", "")), AGE],
    "configmaps": [NAME, (_col("Data", "integer"), lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})), AGE],
    "secrets": [NAME, (_col("Type"), lambda o: o.get("type", "Opaque")), (_col("Data", "integer"), lambda o: len(o.get("data") or {})), AGE],
    "services": [NAME, (_col("Type"), lambda o: (o.get("spec") or {}).get("type", "ClusterIP")),
                 (_col("Cluster-IP"), lambda o: (o.get("spec") or {}).get("clusterIP", "")), AGE],
    "events": [(_col("Last Seen"), lambda o: age(o.get("lastTimestamp") or o.get("eventTime") or o["metadata"].get("creationTimestamp"))),
               (_col("Type"), lambda o: o.get("type", "")), (_col("Reason"), lambda o: o.get("reason", "")),
               (_col("Object"), lambda o: f"{(o.get('involvedObject') or {}).get('kind', '').lower()}/{(o.get('involvedObject') or {}).get('name', '')}"),
               (_col("Message"), lambda o: o.get("message", "")), NAME],
}


def _crd_column(spec: dict[str, Any]) -> Column:
    kind = spec.get("type", "string")

    def cell(obj: dict[str, Any]) -> Any:
        found = jsonpath(obj, spec.get("jsonPath", ""))
        if not found:
            return None
        value = found[0]
        if kind == "date":
            return age(value)
        if kind in ("string",) and not isinstance(value, str):
            return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        return value

    column = _col(spec["name"], "string" if kind == "date" else kind, spec.get("priority", 0), spec.get("format", ""))
    column["description"] = spec.get("description", column["description"])
    return column, cell


def columns(rtype: ResourceType, version: str | None) -> list[Column]:
    if rtype.crd:
        specs = rtype.columns.get(version or rtype.version) or []
        return [NAME] + [_crd_column(s) for s in specs] if specs else [NAME, AGE]
    # Only core kinds have dedicated printers here; grouped ones (leases, CRDs ...) print NAME/AGE.
    return [NAME, AGE] if rtype.group else _BUILTIN.get(rtype.plural, [NAME, AGE])


def table(rtype: ResourceType, version: str | None, objects: list[dict[str, Any]], resource_version: str,
          include_object: str = "Metadata", list_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Table of ``objects``; rows carry PartialObjectMetadata unless includeObject says otherwise."""
    cols = columns(rtype, version)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [_safe(fn, obj) for _, fn in cols]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}
        rows.append(row)
    meta = dict(list_meta or {})
    meta["resourceVersion"] = resource_version
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
            "columnDefinitions": [c for c, _ in cols], "rows": rows}


def _safe(fn: Callable[[dict[str, Any]], Any], obj: dict[str, Any]) -> Any:
    try:
        return fn(obj)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
