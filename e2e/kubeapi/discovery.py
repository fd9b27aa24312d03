"""Discovery documents (legacy, unaggregated format) and a minimal OpenAPI v3 index.

kubectl 1.32 asks for aggregated discovery first; answering the legacy documents with a plain
``application/json`` content type makes client-go fall back to them.
"""

from __future__ import annotations

import re
from typing import Any

from .resources import VERBS, ResourceType

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kubeapi-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "log": ["get"], "binding": ["create"], "finalize": ["update"], "scale": ["get", "patch", "update"]}
_SUBRESOURCE_KINDS = {"log": "Pod", "binding": "Binding", "scale": "Scale"}


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes version ordering: GA > beta > alpha, then by number (v2 > v1 > v1beta2)."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (-1, 0, 0)
    stage = {"alpha": 0, "beta": 1, None: 2}[m[2]]
    return (stage, int(m[1]), int(m[3] or 0))


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    ordered = sorted(set(versions), key=version_priority, reverse=True)
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def group_list(types: list[ResourceType]) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for rtype in types:
        if rtype.group:
            groups.setdefault(rtype.group, []).extend(rtype.versions)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group_entry(g, v) for g, v in sorted(groups.items())]}


def group(types: list[ResourceType], name: str) -> dict[str, Any] | None:
    versions = [v for t in types if t.group == name for v in t.versions]
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(name, versions)}


def resource_list(types: list[ResourceType], group: str, version: str) -> dict[str, Any] | None:
    """The APIResourceList of one group/version (None if nothing is served there)."""
    served = sorted((t for t in types if t.group == group and version in t.versions), key=lambda t: t.plural)
    if not served:
        return None
    resources: list[dict[str, Any]] = []
    for rtype in served:
        entry: dict[str, Any] = {"name": rtype.plural, "singularName": rtype.singular, "namespaced": rtype.namespaced,
                                 "kind": rtype.kind, "verbs": VERBS}
        if rtype.short_names:
            entry["shortNames"] = rtype.short_names
        if rtype.categories:
            entry["categories"] = rtype.categories
        resources.append(entry)
        for sub in sorted(rtype.subresources):
            resources.append({"name": f"{rtype.plural}/{sub}", "singularName": "", "namespaced": rtype.namespaced,
                              "kind": _SUBRESOURCE_KINDS.get(sub, rtype.kind), "verbs": _SUBRESOURCE_VERBS.get(sub, ["get"])})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources}


def openapi_v3_index(types: list[ResourceType]) -> dict[str, Any]:
    """``/openapi/v3``: one entry per group/version, each served by :func:`openapi_v3_doc`."""
    paths: dict[str, Any] = {}
    for rtype in types:
        for version in rtype.versions:
            path = f"apis/{rtype.group}/{version}" if rtype.group else f"api/{version}"
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash=0"}
    return {"paths": paths}


def openapi_v3_doc(types: list[ResourceType], group: str, version: str) -> dict[str, Any] | None:
    """A stub OpenAPI v3 document declaring, per resource, that PATCH takes ``fieldValidation``.

    That is all kubectl needs to leave validation to the server (which is the point: the
    server's own schema errors are what tests should see). There are no component schemas,
    so kubectl computes apply patches without OpenAPI (JSON merge patch for custom resources,
    strategic merge from its compiled-in types for built-ins).
    """
    served = [t for t in types if t.group == group and version in t.versions]
    if not served:
        return None
    paths: dict[str, Any] = {}
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    for rtype in served:
        gvk = {"group": group, "version": version, "kind": rtype.kind}
        base = f"{prefix}/namespaces/{{namespace}}/{rtype.plural}" if rtype.namespaced else f"{prefix}/{rtype.plural}"
        param = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}]
        paths[f"{base}/{{name}}"] = {
            "get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk},
            "put": {"x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk, "parameters": param},
            "patch": {"x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk, "parameters": param},
        }
        paths[base] = {"post": {"x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk, "parameters": param}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]}, "paths": paths,
            "components": {"schemas": {}}}
