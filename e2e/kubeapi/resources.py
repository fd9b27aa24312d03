"""Resource types (built-in and from CRDs) and the per-type rules of the real API server:
name formats, metadata validation, pod defaults and immutability, CRD validation."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import FieldError, invalid, required


def rfc3339(when: float | None = None) -> str:
    """A Kubernetes timestamp (RFC 3339, whole seconds, UTC)."""
    moment = dt.datetime.fromtimestamp(time.time() if when is None else when, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
META_FIELDS = {"metadata.name", "metadata.namespace"}


@dataclass
class ResourceType:
    """One servable resource (``pods``, ``widgets.example.dev``), possibly in several versions."""

    group: str
    version: str  # storage version
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    versions: list[str] = field(default_factory=list)  # served versions
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    subresources: set[str] = field(default_factory=set)
    field_selectors: set[str] = field(default_factory=lambda: set(META_FIELDS))
    name_rule: str = "subdomain"  # "subdomain" | "label" | "dns1035"
    crd: bool = False
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> openAPIV3Schema
    columns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # version -> printer columns
    return_deleted: bool = False  # DELETE answers the object instead of a Status

    def __post_init__(self) -> None:
        self.singular = self.singular or self.kind.lower()
        self.versions = self.versions or [self.version]

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def api_version(self, version: str | None = None) -> str:
        version = version or self.version
        return f"{self.group}/{version}" if self.group else version

    def schema(self, version: str | None = None) -> dict[str, Any] | None:
        return self.schemas.get(version or self.version)


def _builtin(group: str, plural: str, kind: str, namespaced: bool = True, **kw: Any) -> ResourceType:
    return ResourceType(group=group, version="v1", plural=plural, kind=kind, namespaced=namespaced, **kw)


_POD_FIELDS = {
    "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
    "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
}  # fmt: skip
_EVENT_FIELDS = {
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
    "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
    "reason", "reportingComponent", "source", "type",
}  # fmt: skip


def builtin_types() -> list[ResourceType]:
    """The built-in resources this emulator serves."""
    return [
        _builtin("", "namespaces", "Namespace", False, short_names=["ns"], subresources={"status", "finalize"},
                 name_rule="label", return_deleted=True, field_selectors=META_FIELDS | {"status.phase"}),
        _builtin("", "nodes", "Node", False, short_names=["no"], subresources={"status"}, return_deleted=True,
                 field_selectors=META_FIELDS | {"spec.unschedulable"}),
        _builtin("", "pods", "Pod", short_names=["po"], categories=["all"], subresources={"status", "log", "binding"},
                 return_deleted=True, field_selectors=META_FIELDS | _POD_FIELDS),
        _builtin("", "services", "Service", short_names=["svc"], categories=["all"], subresources={"status"},
                 name_rule="dns1035", return_deleted=True),
        _builtin("", "events", "Event", short_names=["ev"], field_selectors=META_FIELDS | _EVENT_FIELDS),
        _builtin("", "secrets", "Secret", field_selectors=META_FIELDS | {"type"}),
        _builtin("", "configmaps", "ConfigMap", short_names=["cm"]),
        _builtin("", "serviceaccounts", "ServiceAccount", short_names=["sa"]),
        _builtin("events.k8s.io", "events", "Event", short_names=["ev"]),
        _builtin("coordination.k8s.io", "leases", "Lease"),
        _builtin("apiextensions.k8s.io", "customresourcedefinitions", "CustomResourceDefinition", False,
                 short_names=["crd", "crds"], subresources={"status"}, return_deleted=True),
    ]  # fmt: skip


def crd_type(crd: dict[str, Any]) -> ResourceType:
    """The resource a (validated) CRD defines."""
    spec = crd["spec"]
    names = spec["names"]
    versions = [v for v in spec["versions"] if v.get("served", True)]
    storage = next(v for v in spec["versions"] if v.get("storage"))
    subresources = set((storage.get("subresources") or {}).keys())
    selectable = {s["jsonPath"].lstrip(".") for v in versions for s in v.get("selectableFields") or []}
    return ResourceType(
        group=spec["group"],
        version=storage["name"],
        versions=[v["name"] for v in versions],
        plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(),
        kind=names["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        short_names=list(names.get("shortNames") or []),
        categories=list(names.get("categories") or []),
        subresources=subresources,
        field_selectors=META_FIELDS | selectable,
        crd=True,
        schemas={v["name"]: ((v.get("schema") or {}).get("openAPIV3Schema") or {}) for v in versions},
        columns={v["name"]: list(v.get("additionalPrinterColumns") or []) for v in versions},
        return_deleted=True,
    )


# ---------------------------------------------------------------------------------------------
# names and metadata

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
MAX_ANNOTATIONS_BYTES = 256 * 1024


def dns_subdomain_message() -> str:
    return ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
            r"validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")


def name_errors(name: str, rule: str, path: str = "metadata.name") -> list[FieldError]:
    """The apimachinery name validators (subdomain / RFC 1123 label / RFC 1035 label)."""
    if rule == "label":
        limit, ok = 63, _LABEL.match(name)
        message = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                   "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
                   "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
    elif rule == "dns1035":
        limit, ok = 63, _DNS1035.match(name)
        message = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                   "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                   "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
    else:
        limit, ok, message = 253, _SUBDOMAIN.match(name), dns_subdomain_message()
    errors = []
    if len(name) > limit:
        errors.append(invalid(path, name, f"must be no more than {limit} characters"))
    if not ok:
        errors.append(invalid(path, name, message))
    return errors


def qualified_name_errors(key: str, path: str) -> list[FieldError]:
    """Label keys, annotation keys and finalizers: ``[prefix/]name``."""
    prefix, _, name = key.rpartition("/")
    errors = []
    if prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        errors.append(invalid(path, key, "prefix part " + dns_subdomain_message()))
    if not name or len(name) > 63 or not _QUALIFIED.match(name):
        errors.append(invalid(path, key, "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                              "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
                              "'123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"))
    return errors


def metadata_errors(obj: dict[str, Any], rtype: ResourceType) -> list[FieldError]:
    """ObjectMeta validation: name format, labels, annotation size, finalizers, ownerReferences."""
    meta = obj.get("metadata") or {}
    errors = name_errors(meta.get("name", ""), rtype.name_rule)
    for key, value in (meta.get("labels") or {}).items():
        errors.extend(qualified_name_errors(key, "metadata.labels"))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            errors.append(invalid("metadata.labels", value, "a valid label must be an empty string or consist of "
                                  "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                  "alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used "
                                  "for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"))
    annotations = meta.get("annotations") or {}
    for key in annotations:
        errors.extend(qualified_name_errors(key.lower(), "metadata.annotations"))
    size = sum(len(k) + len(v if isinstance(v, str) else json.dumps(v)) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        errors.append(FieldError("TooLong", "metadata.annotations", f"must have at most {MAX_ANNOTATIONS_BYTES} bytes", ""))
    for index, finalizer in enumerate(meta.get("finalizers") or []):
        errors.extend(qualified_name_errors(finalizer, f"metadata.finalizers[{index}]"))
    for index, ref in enumerate(meta.get("ownerReferences") or []):
        for key in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(key):
                errors.append(required(f"metadata.ownerReferences[{index}].{key}"))
    if sum(1 for ref in meta.get("ownerReferences") or [] if ref.get("controller")) > 1:
        errors.append(invalid("metadata.ownerReferences", meta["ownerReferences"], "Only one reference can have Controller set to true"))
    return errors
