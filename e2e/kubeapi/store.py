"""The object store behind the emulated API server, usable directly (no HTTP) from tests.

Everything the real server decides about an object happens here, under one lock: resource
versions from a global counter, uid/generation/timestamps, optimistic concurrency, status
subresource separation, CRD schema pruning/defaulting/validation, graceful pod deletion,
finalizers, namespace teardown and ownerReference garbage collection. Every write appends one
event to a bounded log that watches replay from a resourceVersion.

Stored objects are never mutated after being stored (each write stores a fresh copy), so an
event may hand its object to many watchers; everything returned to callers is a deep copy.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import errors as err
from .errors import APIError, FieldError
from .patch import MERGE_KEYS, json_patch, merge_patch, schema_list_keys, strategic_merge
from .resources import ResourceType, builtin_types, crd_type, metadata_errors, rfc3339
from .schema import OBJECT_META_FIELDS, apply_defaults, prune, validate
from .selectors import make_filter
from .strategies import (
    CRD_KEY,
    crd_status,
    decode_problem,
    pod_update_errors,
    prepare_create,
    type_errors,
)

log = logging.getLogger(__name__)

PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+json": "apply",
}
_SERVER_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "resourceVersion")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's SimpleNameGenerator alphabet


@dataclass(frozen=True)
class WatchEvent:
    """One write: ``object`` is the state after it (the last state for DELETED), ``old`` before it."""

    rv: int
    key: str
    type: str  # ADDED | MODIFIED | DELETED
    object: dict[str, Any]
    old: dict[str, Any] | None


class Store:
    """Thread-safe object store. ``resource`` arguments accept ``pods``, ``po``, ``Pod``,
    ``widgets.example.dev`` ... (see :meth:`resource`)."""

    def __init__(self, history: int = 10000) -> None:
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._types: dict[str, ResourceType] = {}
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self._uids: dict[str, tuple[str, str, str]] = {}  # uid -> (key, namespace, name)
        self._dependents: dict[str, set[str]] = {}  # owner uid -> dependent uids
        self._rv = 0
        self._log: deque[WatchEvent] = deque(maxlen=history)
        self._compacted = 0  # events up to this resourceVersion can no longer be replayed
        self._subscribers: list[Callable[[WatchEvent], None]] = []
        self._logs: dict[tuple[str, str], dict[str, list[str]]] = {}
        self._next_ip = 0
        self._next_service_ip = 0
        for rtype in builtin_types():
            self._register(rtype)
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create("namespaces", {"metadata": {"name": name}})

    # -----------------------------------------------------------------------------------------
    # resource types

    def _register(self, rtype: ResourceType) -> None:
        self._types[rtype.key] = rtype
        self._objects.setdefault(rtype.key, {})

    def resource_types(self) -> list[ResourceType]:
        with self.lock:
            return list(self._types.values())

    def resource(self, name: str) -> ResourceType:
        """Resolve ``pods``/``pod``/``po``/``Pod``/``plural.group``; core wins on ambiguity."""
        with self.lock:
            if name in self._types:
                return self._types[name]
            first, _, group = name.lower().partition(".")
            found = [
                t for t in self._types.values()
                if (not group or t.group == group) and first in {t.plural, t.singular, t.kind.lower(), *t.short_names}
            ]  # fmt: skip
            if not found:
                raise APIError(404, "NotFound", f'the server doesn\'t have a resource type "{name}"')
            return min(found, key=lambda t: (t.group != "", t.group))

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The resource served at ``/apis/{group}/{version}/{plural}``, if any."""
        with self.lock:
            rtype = self._types.get(f"{plural}.{group}" if group else plural)
            return rtype if rtype and version in rtype.versions else None

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    # -----------------------------------------------------------------------------------------
    # reads

    def get(self, resource: str, namespace: str | None, name: str, version: str | None = None) -> dict[str, Any]:
        with self.lock:
            rtype = self.resource(resource)
            return self._out(rtype, self._stored(rtype, namespace, name), version)

    def try_get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.get(resource, namespace, name)
        except APIError as exc:
            if exc.code == 404:
                return None
            raise

    def list(self, resource: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
        return self.list_with_version(resource, namespace, label_selector, field_selector, version)[0]

    def list_with_version(self, resource: str, namespace: str | None = None, label_selector: str | None = None,
                          field_selector: str | None = None, version: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """Matching objects sorted by namespace/name, and the resourceVersion of the snapshot."""
        with self.lock:
            rtype = self.resource(resource)
            keep = make_filter(label_selector, field_selector, rtype.field_selectors)
            items = [
                self._out(rtype, obj, version)
                for (ns, _), obj in sorted(self._objects[rtype.key].items())
                if (namespace is None or ns == namespace) and keep(obj)
            ]
            return items, str(self._rv)

    def _stored(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._objects[rtype.key].get((self._ns(rtype, namespace), name))
        if obj is None:
            raise err.not_found(rtype.plural, rtype.group, name)
        return obj

    def _ns(self, rtype: ResourceType, namespace: str | None) -> str:
        if not rtype.namespaced:
            return ""
        if not namespace:
            raise err.bad_request(f"a namespace is required for namespaced resource {rtype.key}")
        return namespace

    def _out(self, rtype: ResourceType, obj: dict[str, Any], version: str | None) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        out["apiVersion"] = rtype.api_version(version)
        return out

    def wait_for(self, resource: str, namespace: str | None, name: str,
                 predicate: Callable[[dict[str, Any] | None], bool], timeout: float = 10.0) -> dict[str, Any] | None:
        """Block until ``predicate(object or None)`` holds; returns that state (TimeoutError if not)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                current = self.try_get(resource, namespace, name)
                if predicate(current):
                    return current
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{resource} {namespace}/{name}: condition not met in {timeout}s; last state: {current}")
                self._changed.wait(left)

    # -----------------------------------------------------------------------------------------
    # watch support

    def subscribe(self, callback: Callable[[WatchEvent], None]) -> None:
        """Call ``callback(event)`` for every write, under the store lock (keep it quick)."""
        with self.lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[WatchEvent], None]) -> None:
        with self.lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def events_since(self, resource_version: int) -> list[WatchEvent]:
        """Events after ``resource_version``; 410 Expired if some were already dropped."""
        with self.lock:
            if resource_version < self._compacted:
                raise err.gone(f"too old resource version: {resource_version} ({self._compacted + 1})")
            return [e for e in self._log if e.rv > resource_version]

    # -----------------------------------------------------------------------------------------
    # writes

    def create(self, resource: str, obj: dict[str, Any], namespace: str | None = None, *, version: str | None = None,
               field_validation: str = "Warn", dry_run: bool = False, warnings: list[str] | None = None) -> dict[str, Any]:
        """POST: 409 if it exists, 422 if invalid, 404 if its namespace does not exist."""
        with self.lock:
            rtype = self.resource(resource)
            obj = self._decode(rtype, obj, version)
            version = self._version_of(rtype, obj, version)
            meta = obj["metadata"]
            namespace = self._namespace_for(rtype, meta, namespace)
            if rtype.namespaced:
                self._check_namespace_open(namespace, rtype)
            for key in _SERVER_META + ("selfLink", "managedFields"):
                meta.pop(key, None)
            name = meta.get("name") or ""
            if not name and meta.get("generateName"):
                name = self._generate_name(rtype, namespace, meta["generateName"])
            meta["name"] = name
            with _typed(rtype, version):
                prepare_create(rtype, obj, self._service_ip)
                problems = self._schema_pass(rtype, obj, None, version, field_validation, warnings)
                if not name:
                    problems = [err.required("metadata.name", "name or generateName is required")]
                else:
                    problems += metadata_errors(obj, rtype) + type_errors(rtype, obj)
            if problems:
                raise err.invalid_object(rtype.kind, rtype.group, name, problems)
            self._admit(rtype, obj)
            if (namespace, name) in self._objects[rtype.key]:
                raise err.already_exists(rtype.plural, rtype.group, name)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = rfc3339()
            if rtype.crd or rtype.key in (CRD_KEY, "pods"):  # pods since 1.34; configmaps etc. never
                meta["generation"] = 1
            if dry_run:
                return self._out(rtype, obj, version)
            stored = self._commit(rtype, None, obj, "ADDED")
            self._after_create(rtype, stored)
            return self._out(rtype, stored, version)

    def update(self, resource: str, obj: dict[str, Any], namespace: str | None = None, *, name: str | None = None,
               subresource: str | None = None, version: str | None = None, field_validation: str = "Warn",
               dry_run: bool = False, warnings: list[str] | None = None) -> dict[str, Any]:
        """PUT: 409 on a stale resourceVersion; custom resources must name one."""
        with self.lock:
            rtype = self.resource(resource)
            obj = self._decode(rtype, obj, version)
            version = self._version_of(rtype, obj, version)
            meta = obj["metadata"]
            name = name or meta.get("name", "")
            if meta.get("name") and meta["name"] != name:
                raise err.bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
            namespace = self._namespace_for(rtype, meta, namespace)
            current = self._stored(rtype, namespace, name)
            given = meta.get("resourceVersion")
            if not given and rtype.crd:
                raise err.invalid_object(rtype.kind, rtype.group, name, [FieldError("Invalid", "metadata.resourceVersion", "must be specified for an update", "0x0")])
            if given and given != current["metadata"]["resourceVersion"]:
                raise err.conflict(rtype.plural, rtype.group, name, err.STALE)
            return self._update(rtype, current, obj, subresource, version, field_validation, dry_run, warnings)

    def patch(self, resource: str, namespace: str | None, name: str, body: Any, patch_type: str = "merge", *,
              subresource: str | None = None, version: str | None = None, field_manager: str | None = None,
              field_validation: str = "Warn", dry_run: bool = False, warnings: list[str] | None = None) -> dict[str, Any]:
        """PATCH with ``merge``/``json``/``strategic``/``apply`` (or their content types)."""
        kind = PATCH_TYPES.get(patch_type.split(";")[0].strip(), patch_type)
        with self.lock:
            rtype = self.resource(resource)
            if kind == "apply" and not field_manager:
                raise err.invalid_object("PatchOptions", "meta.k8s.io", "", [err.required("fieldManager", "is required for apply patch")])
            current = self._objects[rtype.key].get((self._ns(rtype, namespace), name))
            if current is None:
                if kind == "apply" and subresource is None:
                    if not isinstance(body, dict):
                        raise err.bad_request("an apply patch must be an object")
                    body = copy.deepcopy(body)
                    if isinstance(body.setdefault("metadata", {}), dict):
                        body["metadata"].setdefault("name", name)
                    return self.create(resource, body, namespace, version=version, field_validation=field_validation,
                                       dry_run=dry_run, warnings=warnings)
                raise err.not_found(rtype.plural, rtype.group, name)
            base = self._out(rtype, current, version)
            if kind == "merge":
                patched = merge_patch(base, body)
            elif kind == "json":
                patched = json_patch(base, body)
            elif kind == "strategic" and not rtype.crd:
                patched = strategic_merge(base, body)
            elif kind == "apply":
                keys = schema_list_keys(rtype.schema(version)) if rtype.crd else MERGE_KEYS
                patched = strategic_merge(base, body, keys)
            else:
                raise err.unsupported_media(patch_type)
            if not isinstance(patched, dict):
                raise err.bad_request("the patch did not produce an object")
            patched = self._decode(rtype, patched, version)
            version = self._version_of(rtype, patched, version)
            given = patched["metadata"].get("resourceVersion")
            if given and given != current["metadata"]["resourceVersion"]:
                raise err.conflict(rtype.plural, rtype.group, name, err.STALE)  # a patch may pin a version
            return self._update(rtype, current, patched, subresource, version, field_validation, dry_run, warnings)

    def delete(self, resource: str, namespace: str | None, name: str, *, grace_period_seconds: int | None = None,
               propagation_policy: str | None = None, preconditions: dict[str, Any] | None = None,
               dry_run: bool = False, version: str | None = None) -> dict[str, Any]:
        """DELETE; returns the object's last state (with deletionTimestamp while it lingers)."""
        with self.lock:
            rtype = self.resource(resource)
            current = self._stored(rtype, namespace, name)
            for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
                wanted, actual = (preconditions or {}).get(field), current["metadata"].get(field)
                if wanted and wanted != actual:
                    why = f"Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {actual}"
                    raise err.conflict(rtype.plural, rtype.group, name, why)
            policy = propagation_policy or "Background"
            if policy not in ("Background", "Foreground", "Orphan"):
                raise err.invalid_object("DeleteOptions", "meta.k8s.io", "", [FieldError("NotSupported", "propagationPolicy", '"Foreground", "Background", "Orphan"', policy)])
            if dry_run:
                return self._out(rtype, current, version)
            return self._out(rtype, self._delete(rtype, current, grace_period_seconds, policy), version)

    def delete_collection(self, resource: str, namespace: str | None = None, label_selector: str | None = None,
                          field_selector: str | None = None, **options: Any) -> list[dict[str, Any]]:
        with self.lock:
            items = self.list(resource, namespace, label_selector, field_selector)
            return [self.delete(resource, i["metadata"].get("namespace"), i["metadata"]["name"], **options) for i in items]

    # -- pods ---------------------------------------------------------------------------------

    def bind(self, namespace: str, name: str, node: str) -> dict[str, Any]:
        """``pods/binding``: set spec.nodeName once (409 if already bound), as the scheduler does."""
        with self.lock:
            rtype = self.resource("pods")
            current = self._stored(rtype, namespace, name)
            if current["metadata"].get("deletionTimestamp"):
                raise err.conflict("pods", "", name, "pod is being deleted, cannot be assigned to a host")
            bound = (current.get("spec") or {}).get("nodeName")
            if bound:
                raise err.conflict("pods", "", name, f"pod {name} is already assigned to node \"{bound}\"")
            new = copy.deepcopy(current)
            new["spec"]["nodeName"] = node
            return self._out(rtype, self._commit(rtype, current, new, "MODIFIED"), None)

    def append_log(self, namespace: str, name: str, text: str, container: str | None = None) -> None:
        """Append to a pod container's log (what ``pods/{name}/log`` returns)."""
        with self.lock:
            pod = self._stored(self.resource("pods"), namespace, name)
            container = container or pod["spec"]["containers"][0]["name"]
            self._logs.setdefault((namespace, name), {}).setdefault(container, []).append(text)

    def read_log(self, namespace: str, name: str, container: str | None = None, tail_lines: int | None = None) -> str:
        with self.lock:
            pod = self._stored(self.resource("pods"), namespace, name)
            names = [c["name"] for c in pod["spec"].get("containers", [])]
            if container is None:
                if len(names) != 1:
                    raise err.bad_request(f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]")
                container = names[0]
            elif container not in names + [c["name"] for c in pod["spec"].get("initContainers", [])]:
                raise err.bad_request(f"container {container} is not valid for pod {name}")
            text = "".join(self._logs.get((namespace, name), {}).get(container, []))
        if tail_lines is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail_lines:] if tail_lines > 0 else [])
        return text

    def next_pod_ip(self) -> str:
        with self.lock:
            self._next_ip = self._next_ip % 253 + 1
            return f"127.0.0.{self._next_ip + 1}"

    # -----------------------------------------------------------------------------------------
    # internals: decoding and admission

    def _decode(self, rtype: ResourceType, obj: Any, version: str | None) -> dict[str, Any]:
        """Check kind/apiVersion like the decoder does and return a private copy."""
        if not isinstance(obj, dict):
            raise err.bad_request(f"the body of the request must be a {rtype.kind} object")
        obj = copy.deepcopy(obj)
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if kind and kind != rtype.kind:
            raise err.bad_request(f'{kind} in version "{api_version}" cannot be handled as a {rtype.kind}: the kind in the data does not match')
        if api_version and api_version not in {rtype.api_version(v) for v in rtype.versions}:
            raise err.bad_request(f"the API version in the data ({api_version}) does not match the expected API version ({rtype.api_version(version)})")
        obj.setdefault("metadata", {})
        problem = decode_problem(rtype, obj)
        if problem:
            shown = (api_version or rtype.api_version(version)).rpartition("/")[2]
            raise err.bad_request(f'{rtype.kind} in version "{shown}" cannot be handled as a {rtype.kind}: {problem}')
        for key in ("spec", "status"):
            if key in obj and obj[key] is None:
                del obj[key]  # JSON null decodes to the zero value
        obj["kind"] = rtype.kind
        return obj

    def _version_of(self, rtype: ResourceType, obj: dict[str, Any], version: str | None) -> str:
        api_version = obj.get("apiVersion", "")
        if version is None and api_version:
            version = api_version.rpartition("/")[2]
        version = version or rtype.version
        obj["apiVersion"] = rtype.api_version(rtype.version)  # stored in the storage version
        return version

    def _namespace_for(self, rtype: ResourceType, meta: dict[str, Any], namespace: str | None) -> str:
        if not rtype.namespaced:
            meta.pop("namespace", None)
            return ""
        given = meta.get("namespace")
        if namespace and given and given != namespace:
            raise err.bad_request("the namespace of the provided object does not match the namespace sent on the request")
        namespace = namespace or given
        if not namespace:
            raise err.bad_request(f"a namespace is required for namespaced resource {rtype.key}")
        meta["namespace"] = namespace
        return namespace

    def _check_namespace_open(self, namespace: str, rtype: ResourceType) -> None:
        ns = self._objects["namespaces"].get(("", namespace))
        if ns is None:
            raise err.not_found("namespaces", "", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise err.forbidden_request(
                f'{rtype.plural} is forbidden: unable to create new content in namespace {namespace} because it is being terminated',
                name=namespace, kind=rtype.plural, causes=[{"reason": "NamespaceTerminating", "message": f"namespace {namespace} is being terminated", "field": "metadata.namespace"}])

    def _generate_name(self, rtype: ResourceType, namespace: str, prefix: str) -> str:
        for _ in range(16):
            name = prefix[:58] + "".join(random.choice(_GENERATE_CHARS) for _ in range(5))
            if (namespace, name) not in self._objects[rtype.key]:
                return name
        return name

    def _service_ip(self) -> str:
        self._next_service_ip += 1
        return f"10.96.{self._next_service_ip // 250}.{self._next_service_ip % 250 + 1}"

    def _admit(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        """Admission the real server runs on create (ServiceAccount admission for pods)."""
        if rtype.key != "pods":
            return
        namespace, account = obj["metadata"]["namespace"], obj["spec"]["serviceAccountName"]
        if (namespace, account) not in self._objects["serviceaccounts"]:
            raise err.forbidden_request(
                f'pods "{obj["metadata"]["name"]}" is forbidden: error looking up service account {namespace}/{account}: serviceaccount "{account}" not found',
                name=obj["metadata"]["name"], kind="pods")

    def _schema_pass(self, rtype: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, version: str,
                     field_validation: str, warnings: list[str] | None) -> list[FieldError]:
        """Prune unknown fields (Strict: 400), default, then validate a custom resource."""
        if field_validation not in ("Strict", "Warn", "Ignore"):
            raise err.bad_request(f"fieldValidation must be one of Ignore, Warn, Strict, got {field_validation!r}")
        schema = rtype.schema(version) if rtype.crd else None
        if schema is not None:
            unknown = prune(schema, obj)
        else:  # built-ins: only ObjectMeta is checked for unknown fields here
            meta = obj["metadata"]
            unknown = [f"metadata.{k}" for k in list(meta) if k not in OBJECT_META_FIELDS]
            for key in unknown:
                meta.pop(key[len("metadata."):])
        if unknown and field_validation == "Strict":
            fields = ", ".join(f'unknown field "{p}"' for p in unknown)
            raise err.bad_request(f'{rtype.kind} in version "{version}" cannot be handled as a {rtype.kind}: strict decoding error: {fields}')
        if unknown and field_validation == "Warn" and warnings is not None:
            warnings.extend(f'unknown field "{p}"' for p in unknown)
        if schema is None:
            return []
        apply_defaults(schema, obj)
        return validate(schema, obj, old)

    def _after_create(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        if rtype.key == "namespaces":
            # The serviceaccount controller gives every namespace a "default" account.
            self.create("serviceaccounts", {"metadata": {"name": "default", "namespace": obj["metadata"]["name"]}})
        elif rtype.key == CRD_KEY:
            self._register(crd_type(obj))

    # -----------------------------------------------------------------------------------------
    # internals: update

    def _update(self, rtype: ResourceType, current: dict[str, Any], new: dict[str, Any], subresource: str | None,
                version: str, field_validation: str, dry_run: bool, warnings: list[str] | None) -> dict[str, Any]:
        if subresource not in (None, "status"):
            raise err.method_not_allowed()
        if subresource == "status":
            if not rtype.has_status:
                raise err.not_found(rtype.plural, rtype.group, current["metadata"]["name"])
            status = new.get("status")
            new = copy.deepcopy(current)  # /status ignores everything but status
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif rtype.has_status:
            # The main resource ignores status changes when a /status subresource exists.
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        meta, old_meta = new["metadata"], current["metadata"]
        for key in _SERVER_META + ("name", "namespace"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        meta.pop("managedFields", None)
        problems: list[FieldError] = []
        if old_meta.get("deletionTimestamp"):
            added = [f for f in meta.get("finalizers") or [] if f not in (old_meta.get("finalizers") or [])]
            if added:
                shown = "[]string{" + ", ".join(f'"{f}"' for f in added) + "}"
                problems.append(err.forbidden("metadata.finalizers", f"no new finalizers can be added if the object is being deleted, found new finalizers {shown}"))
        with _typed(rtype, version):
            if rtype.key == "pods" and subresource is None:
                problems += pod_update_errors(current, new)
            if rtype.key == CRD_KEY:
                for field in ("group", "scope"):
                    if (new.get("spec") or {}).get(field) != (current.get("spec") or {}).get(field):
                        problems.append(invalid_immutable(f"spec.{field}", (new.get("spec") or {}).get(field)))
                new["status"] = crd_status(new, current)
            problems += self._schema_pass(rtype, new, current, version, field_validation, warnings)
            problems += metadata_errors(new, rtype) + type_errors(rtype, new)
        if problems:
            raise err.invalid_object(rtype.kind, rtype.group, old_meta["name"], problems)
        if "generation" in old_meta and _without(new, rtype) != _without(current, rtype):
            meta["generation"] = old_meta["generation"] + 1
        if new == current:
            return self._out(rtype, current, version)  # a no-op write: no new resourceVersion, no event
        if dry_run:
            return self._out(rtype, new, version)
        if self._removable(rtype, new):
            return self._out(rtype, self._remove(rtype, current, new), version)
        stored = self._commit(rtype, current, new, "MODIFIED")
        if rtype.key == CRD_KEY:
            self._register(crd_type(stored))
        return self._out(rtype, stored, version)

    # -----------------------------------------------------------------------------------------
    # internals: deletion and garbage collection

    def _grace_seconds(self, rtype: ResourceType, obj: dict[str, Any], requested: int | None) -> int:
        """Only pods terminate gracefully: unscheduled or finished pods go at once."""
        if rtype.key != "pods":
            return 0
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return 0
        if requested is None:
            requested = spec.get("terminationGracePeriodSeconds", 30)
        return max(0, int(requested))

    def _delete(self, rtype: ResourceType, current: dict[str, Any], grace: int | None, policy: str) -> dict[str, Any]:
        meta = current["metadata"]
        seconds = self._grace_seconds(rtype, current, grace)
        if policy == "Orphan":
            self._orphan(current)
        dependents = bool(self._dependents.get(meta["uid"]))
        if not meta.get("deletionTimestamp") and seconds == 0 and not meta.get("finalizers") \
                and not (policy == "Foreground" and dependents) and not self._has_content(rtype, current):
            return self._remove(rtype, current, current)
        new = copy.deepcopy(current)
        new_meta = new["metadata"]
        if not meta.get("deletionTimestamp") or seconds < meta.get("deletionGracePeriodSeconds", 0):
            new_meta["deletionTimestamp"] = rfc3339(time.time() + seconds)
            new_meta["deletionGracePeriodSeconds"] = seconds
        if policy == "Foreground" and dependents and "foregroundDeletion" not in (meta.get("finalizers") or []):
            new_meta["finalizers"] = list(meta.get("finalizers") or []) + ["foregroundDeletion"]
        if rtype.key == "namespaces":
            new["status"] = {"phase": "Terminating"}
        if new != current:
            if self._removable(rtype, new):
                return self._remove(rtype, current, new)
            current = self._commit(rtype, current, new, "MODIFIED")
        # Work the real controllers would do: namespace teardown, CRD instance cleanup, foreground GC.
        for dep_type, dep in list(self._contents(rtype, current)):
            if (live := self._live(dep_type, dep)) is not None and not live["metadata"].get("deletionTimestamp"):
                self._delete(dep_type, live, None, "Background")
        if policy == "Foreground":
            for dep_type, dep in self._dependent_objects(meta["uid"]):
                if (live := self._live(dep_type, dep)) is not None and not live["metadata"].get("deletionTimestamp"):
                    self._delete(dep_type, live, None, "Foreground")
        return self._finish(rtype, current)

    def _live(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The stored state of ``obj`` now (None once it is gone: cascades may have removed it)."""
        latest = self._objects.get(rtype.key, {}).get((obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))
        return latest if latest is not None and latest["metadata"]["uid"] == obj["metadata"]["uid"] else None

    def _finish(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """Remove a terminating object whose blockers are all gone; return its last state."""
        latest = self._live(rtype, obj)
        if latest is None:
            return obj
        finalizers = latest["metadata"].get("finalizers") or []
        if "foregroundDeletion" in finalizers and not self._dependents.get(latest["metadata"]["uid"]):
            new = copy.deepcopy(latest)
            new["metadata"]["finalizers"] = [f for f in finalizers if f != "foregroundDeletion"]
            if not new["metadata"]["finalizers"]:
                del new["metadata"]["finalizers"]
            if self._removable(rtype, new):
                return self._remove(rtype, latest, new)
            return self._commit(rtype, latest, new, "MODIFIED")
        if self._removable(rtype, latest):
            return self._remove(rtype, latest, latest)
        return latest

    def _removable(self, rtype: ResourceType, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        return bool(meta.get("deletionTimestamp")) and not meta.get("finalizers") \
            and not meta.get("deletionGracePeriodSeconds") and not self._has_content(rtype, obj)

    def _has_content(self, rtype: ResourceType, obj: dict[str, Any]) -> bool:
        return next(self._contents(rtype, obj), None) is not None

    def _contents(self, rtype: ResourceType, obj: dict[str, Any]) -> Iterator[tuple[ResourceType, dict[str, Any]]]:
        """Objects that must go before ``obj`` can: a namespace's content, a CRD's instances."""
        if rtype.key == "namespaces":
            name = obj["metadata"]["name"]
            for key, objects in list(self._objects.items()):
                if self._types[key].namespaced:
                    for (ns, _), item in list(objects.items()):
                        if ns == name:
                            yield self._types[key], item
        elif rtype.key == CRD_KEY:
            spec = obj.get("spec") or {}
            key = f"{(spec.get('names') or {}).get('plural')}.{spec.get('group')}"
            for item in list(self._objects.get(key, {}).values()):
                yield self._types[key], item

    def _dependent_objects(self, uid: str) -> list[tuple[ResourceType, dict[str, Any]]]:
        out = []
        for dep_uid in sorted(self._dependents.get(uid, ())):
            key, ns, name = self._uids[dep_uid]
            out.append((self._types[key], self._objects[key][(ns, name)]))
        return out

    def _orphan(self, owner: dict[str, Any]) -> None:
        uid = owner["metadata"]["uid"]
        for dep_type, dep in self._dependent_objects(uid):
            new = copy.deepcopy(dep)
            new["metadata"]["ownerReferences"] = [r for r in dep["metadata"]["ownerReferences"] if r.get("uid") != uid]
            if not new["metadata"]["ownerReferences"]:
                del new["metadata"]["ownerReferences"]
            self._commit(dep_type, dep, new, "MODIFIED")

    def _remove(self, rtype: ResourceType, current: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
        """Delete from storage (DELETED event), then run the garbage collector's consequences."""
        gone = self._commit(rtype, current, copy.deepcopy(final), "DELETED")
        meta = gone["metadata"]
        if rtype.key == "pods":
            self._logs.pop((meta["namespace"], meta["name"]), None)
        if rtype.key == CRD_KEY:
            spec = gone.get("spec") or {}
            key = f"{spec['names']['plural']}.{spec['group']}"
            self._types.pop(key, None)
            self._objects.pop(key, None)
        # Background cascade: dependents whose every owner is gone are deleted; the others lose the reference.
        for dep_type, dep in self._dependent_objects(meta["uid"]):
            if (dep := self._live(dep_type, dep)) is None:
                continue
            refs = dep["metadata"].get("ownerReferences") or []
            if any(r.get("uid") != meta["uid"] and r.get("uid") in self._uids for r in refs):
                new = copy.deepcopy(dep)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != meta["uid"]]
                self._commit(dep_type, dep, new, "MODIFIED")
            elif not dep["metadata"].get("deletionTimestamp"):
                self._delete(dep_type, dep, None, "Background")
        # Owners waiting in foreground deletion, a terminating namespace or CRD may now be done.
        waiting = [self._uids.get(r.get("uid")) for r in meta.get("ownerReferences") or []]
        if rtype.namespaced:
            waiting.append(("namespaces", "", meta["namespace"]))
        if rtype.crd:
            waiting.append((CRD_KEY, "", rtype.key))
        for entry in waiting:
            if entry and entry[0] in self._objects:
                owner = self._objects[entry[0]].get((entry[1], entry[2]))
                if owner is not None and owner["metadata"].get("deletionTimestamp"):
                    self._finish(self._types[entry[0]], owner)
        return gone

    # -----------------------------------------------------------------------------------------
    # internals: the single write path

    def _commit(self, rtype: ResourceType, old: dict[str, Any] | None, new: dict[str, Any], kind: str) -> dict[str, Any]:
        """Give ``new`` the next resourceVersion, store (or drop) it, log and publish the event."""
        self._rv += 1
        meta = new["metadata"]
        meta["resourceVersion"] = str(self._rv)
        where = (meta.get("namespace", "") if rtype.namespaced else "", meta["name"])
        uid = meta["uid"]
        before = {r.get("uid") for r in (old or {}).get("metadata", {}).get("ownerReferences") or []} if old else set()
        after = set() if kind == "DELETED" else {r.get("uid") for r in meta.get("ownerReferences") or []}
        for owner in before - after:
            self._dependents.get(owner, set()).discard(uid)
        for owner in after - before:
            self._dependents.setdefault(owner, set()).add(uid)
        if kind == "DELETED":
            del self._objects[rtype.key][where]
            self._uids.pop(uid, None)
        else:
            self._objects[rtype.key][where] = new
            self._uids[uid] = (rtype.key, where[0], where[1])
        if self._log.maxlen and len(self._log) == self._log.maxlen:
            self._compacted = self._log[0].rv
        event = WatchEvent(self._rv, rtype.key, kind, new, old)
        self._log.append(event)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # a broken watcher must not break writes
                log.exception("watch subscriber failed")
        self._changed.notify_all()
        return new


@contextlib.contextmanager
def _typed(rtype: ResourceType, version: str) -> Iterator[None]:
    """Built-in objects are typed: a field of the wrong JSON type is a decode error (400).

    The checks here read fields assuming their Go types; where a body breaks that assumption
    the real server's decoder would already have refused it, so answer the same way.
    """
    try:
        yield
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        if rtype.crd:
            raise  # custom resources are validated by their schema: this would be an emulator bug
        raise err.bad_request(f'{rtype.kind} in version "{version}" cannot be handled as a {rtype.kind}: '
                              f"json: cannot unmarshal a field of the wrong type ({type(exc).__name__}: {exc})") from None


def _without(obj: dict[str, Any], rtype: ResourceType) -> dict[str, Any]:
    """What generation tracks: everything but metadata (and status when it is a subresource)."""
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if rtype.has_status else set())
    return {k: v for k, v in obj.items() if k not in skip}


def invalid_immutable(path: str, value: Any) -> FieldError:
    return FieldError("Invalid", path, "field is immutable", value)
