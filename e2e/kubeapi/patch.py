"""The four PATCH flavours: JSON merge patch, JSON patch, strategic merge patch, apply.

Strategic merge is simplified: lists of objects merge by a known key (``containers`` by
``name``, ``conditions`` by ``type`` ...), which is what kubectl and controllers rely on; the
directives kubectl emits (``$patch``, ``$setElementOrder``, ``$retainKeys``,
``$deleteFromPrimitiveList``) are honoured or harmlessly dropped.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import APIError, bad_request

# patchMergeKey by field name, as declared on the built-in Go types.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "addresses": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "podIPs": "ip",
    "hostIPs": "ip",
    "resourceClaims": "name",
    "topologySpreadConstraints": "topologyKey",
    "secrets": "name",
}
# Primitive lists whose patch strategy is "merge" (union) rather than replace.
MERGE_PRIMITIVE_LISTS = {"finalizers"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"json patch path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise APIError(422, "Invalid", f"jsonpatch: path {path!r} not found") from None
    return node


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test); a failing op fails the whole patch."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid json patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        parts = _pointer(path)
        if kind in ("move", "copy"):
            value = copy.deepcopy(_walk(doc, _pointer(op.get("from", "")), op.get("from", "")))
            if kind == "move":
                doc = _remove(doc, _pointer(op["from"]), op["from"])
            doc = _add(doc, parts, value, path)
        elif kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")), path)
        elif kind == "remove":
            doc = _remove(doc, parts, path)
        elif kind == "replace":
            doc = _remove(doc, parts, path)
            doc = _add(doc, parts, copy.deepcopy(op.get("value")), path)
        elif kind == "test":
            if _walk(doc, parts, path) != op.get("value"):
                raise APIError(422, "Invalid", f"jsonpatch test operation does not apply: doc is not equal to the value at {path!r}")
        else:
            raise bad_request(f"unknown json patch op {kind!r}")
    return doc


def _add(doc: Any, parts: list[str], value: Any, path: str) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else _index(last, len(parent) + 1, path)
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise APIError(422, "Invalid", f"jsonpatch: cannot add at {path!r}")
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> Any:
    if not parts:
        return None
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, list):
        parent.pop(_index(last, len(parent), path))
    elif isinstance(parent, dict) and last in parent:
        del parent[last]
    else:
        raise APIError(422, "Invalid", f"jsonpatch: unable to remove nonexistent key {last!r} at {path!r}")
    return doc


def _index(text: str, bound: int, path: str) -> int:
    if not text.isdigit() or int(text) >= bound:
        raise APIError(422, "Invalid", f"jsonpatch: index out of range at {path!r}")
    return int(text)


def strategic_merge(target: Any, patch: Any, list_keys: dict[str, str] | None = None) -> Any:
    """Simplified strategic merge (also used for server-side apply)."""
    keys = MERGE_KEYS if list_keys is None else list_keys
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(result.get(name), list):
                result[name] = [v for v in result[name] if v not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value, keys)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value, keys)
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        for key in list(result):
            if key not in retain and key in (target or {}) and key not in patch:
                del result[key]
    return result


def _merge_key(name: str, items: list[Any], keys: dict[str, str]) -> str | None:
    if name == "ports":  # container ports merge on containerPort, service ports on port
        sample = next((i for i in items if isinstance(i, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return keys.get(name)


def _merge_list(name: str, current: Any, patch: list[Any], keys: dict[str, str]) -> list[Any]:
    current = current if isinstance(current, list) else []
    if name in MERGE_PRIMITIVE_LISTS and keys is MERGE_KEYS:
        return list(current) + [v for v in patch if v not in current]
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    key = _merge_key(name, patch + current, keys)
    if key is None or not all(isinstance(i, dict) for i in patch):
        return copy.deepcopy(patch)
    result = copy.deepcopy(current)
    for item in patch:
        position = next((n for n, old in enumerate(result) if isinstance(old, dict) and old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if position is not None:
                result.pop(position)
        elif position is None:
            result.append(strategic_merge({}, item, keys))
        else:
            result[position] = strategic_merge(result[position], item, keys)
    return result


def schema_list_keys(schema: dict[str, Any] | None) -> dict[str, str]:
    """Merge keys declared in a CRD schema (``x-kubernetes-list-type: map``) by field name."""
    keys: dict[str, str] = {}

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        for name, prop in (node.get("properties") or {}).items():
            if isinstance(prop, dict) and prop.get("x-kubernetes-list-type") == "map":
                map_keys = prop.get("x-kubernetes-list-map-keys") or []
                if map_keys:
                    keys[name] = map_keys[0]
            walk(prop)
        walk(node.get("items"))
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])

    walk(schema)
    return keys
