"""Resource types (built-in and from CRDs) and the per-type rules of the real API server:
name formats, metadata validation, pod defaults and immutability, CRD validation."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import FieldError, forbidden, invalid, required
from .schema import check_crd_schema

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


def validate_crd(crd: dict[str, Any]) -> list[FieldError]:
    """What the real server rejects in a CustomResourceDefinition (the commonly hit subset)."""
    errors: list[FieldError] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural = spec.get("group", ""), names.get("plural", "")
    if not group:
        errors.append(required("spec.group"))
    elif "." not in group:
        errors.append(invalid("spec.group", group, "should be a domain with at least one dot"))
    if not plural:
        errors.append(required("spec.names.plural"))
    elif plural != plural.lower():
        errors.append(invalid("spec.names.plural", plural, dns_subdomain_message()))
    if not names.get("kind"):
        errors.append(required("spec.names.kind"))
    name = (crd.get("metadata") or {}).get("name", "")
    if group and plural and name != f"{plural}.{group}":
        errors.append(invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        errors.append(FieldError("NotSupported", "spec.scope", 'supported values: "Cluster", "Namespaced"', spec.get("scope", "")))
    versions = spec.get("versions") or []
    if not versions:
        errors.append(required("spec.versions", "must have exactly one version marked as storage version"))
    elif sum(1 for v in versions if v.get("storage")) != 1:
        errors.append(FieldError("Invalid", "spec.versions", "must have exactly one version marked as storage version"))
    for index, version in enumerate(versions):
        path = f"spec.versions[{index}]"
        if not version.get("name"):
            errors.append(required(f"{path}.name"))
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            errors.append(required(f"{path}.schema.openAPIV3Schema", "schemas are required"))
        else:
            errors.extend(check_crd_schema(schema, f"{path}.schema.openAPIV3Schema"))
    return errors


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


# ---------------------------------------------------------------------------------------------
# pods

DEFAULT_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
]


def default_pod(pod: dict[str, Any]) -> None:
    """API defaulting + admission the real server applies to a new pod (the fields people read)."""
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    tolerations = spec.setdefault("tolerations", [])
    for default in DEFAULT_TOLERATIONS:
        if not any(t.get("key") == default["key"] for t in tolerations):
            tolerations.append(dict(default))
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        if not isinstance(container, dict):
            continue
        image = container.get("image", "")
        latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
    # PrepareForCreate: clients cannot create a pod with a status.
    pod["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}


def _qos_class(spec: dict[str, Any]) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers", []) if isinstance(c, dict)]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(r.get("limits") and (not r.get("requests") or r["requests"] == r["limits"]) for r in resources)
    return "Guaranteed" if guaranteed else "Burstable"


def pod_errors(pod: dict[str, Any]) -> list[FieldError]:
    """Pod spec validation (the required fields every pod must have)."""
    spec = pod.get("spec") or {}
    errors: list[FieldError] = []
    containers = spec.get("containers")
    if not containers:
        errors.append(required("spec.containers"))
    names: set[str] = set()
    for kind in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(kind) or []):
            path = f"spec.{kind}[{index}]"
            name = container.get("name", "") if isinstance(container, dict) else ""
            if not name:
                errors.append(required(f"{path}.name"))
            else:
                errors.extend(name_errors(name, "label", f"{path}.name"))
                if name in names:
                    errors.append(FieldError("Duplicate", f"{path}.name", "", name))
                names.add(name)
            if not (isinstance(container, dict) and container.get("image")):
                errors.append(required(f"{path}.image"))
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        errors.append(FieldError("NotSupported", "spec.restartPolicy", 'supported values: "Always", "OnFailure", "Never"', policy))
    return errors


_POD_MUTABLE = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")


def pod_update_errors(old: dict[str, Any], new: dict[str, Any]) -> list[FieldError]:
    """Pod spec is immutable except images, activeDeadlineSeconds and added tolerations."""
    before, after = dict(old.get("spec") or {}), dict(new.get("spec") or {})
    for spec in (before, after):
        for key in _POD_MUTABLE:
            spec.pop(key, None)
        for kind in ("containers", "initContainers"):
            spec[kind] = [{k: v for k, v in c.items() if k != "image"} for c in spec.get(kind) or []]
    if before == after:
        return []
    return [forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,"
                      "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                      "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                      "(allow it to be set to 1 if it was previously negative)")]


# ---------------------------------------------------------------------------------------------
# decoding


def _go_type(value: Any) -> str:
    """How encoding/json names a JSON value it cannot unmarshal."""
    return {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "null")


def decode_problem(rtype: ResourceType, obj: dict[str, Any]) -> str | None:
    """The typed decoder's complaint about a body of the wrong shape (a 400), if any.

    Catches what bites people in practice: ``labels: {version: 1}`` (numbers are not strings),
    a ``spec`` that is not an object, containers that are not a list of objects.
    """
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return f"json: cannot unmarshal {_go_type(meta)} into Go struct field {rtype.kind}.metadata of type v1.ObjectMeta"
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"json: cannot unmarshal {_go_type(value)} into Go struct field ObjectMeta.metadata.{key} of type map[string]string"
        for item in value.values():
            if not isinstance(item, str):
                return f"json: cannot unmarshal {_go_type(item)} into Go struct field ObjectMeta.metadata.{key} of type string"
    for key, element in (("finalizers", str), ("ownerReferences", dict)):
        value = meta.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(i, element) for i in value)):
            return f"json: cannot unmarshal {_go_type(value)} into Go struct field ObjectMeta.metadata.{key}"
    for key in ("name", "namespace", "generateName", "resourceVersion", "uid"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            return f"json: cannot unmarshal {_go_type(meta[key])} into Go struct field ObjectMeta.metadata.{key} of type string"
    if rtype.crd:
        return None
    for key in ("spec", "status"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            return f"json: cannot unmarshal {_go_type(obj[key])} into Go struct field {rtype.kind}.{key}"
    if rtype.key == "pods":
        spec = obj.get("spec") or {}
        for key in ("containers", "initContainers"):
            value = spec.get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(i, dict) for i in value)):
                return f"json: cannot unmarshal {_go_type(value)} into Go struct field PodSpec.spec.{key} of type []v1.Container"
    if rtype.key in ("configmaps", "secrets"):
        for key in ("data", "stringData"):
            value = obj.get(key)
            if value is not None and (not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())):
                return f"json: cannot unmarshal {_go_type(value)} into Go struct field {rtype.kind}.{key} of type map[string]string"
    return None
