"""Per-kind rules of the built-in registry strategies: defaulting on create, validation,
immutability, typed decoding, and the CRD's own validation and status."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from typing import Any

from .errors import FieldError, forbidden, invalid, required
from .resources import ResourceType, dns_subdomain_message, name_errors, rfc3339
from .schema import check_crd_schema

CRD_KEY = "customresourcedefinitions.apiextensions.k8s.io"


def prepare_create(rtype: ResourceType, obj: dict[str, Any], next_service_ip: Callable[[], str]) -> None:
    """PrepareForCreate + defaulting of the built-in registry strategies."""
    if rtype.has_status and rtype.crd:
        obj.pop("status", None)  # create cannot set status when /status exists
    if rtype.key == "pods":
        default_pod(obj)
    elif rtype.key == "namespaces":
        obj.setdefault("spec", {})["finalizers"] = ["kubernetes"]
        obj["status"] = {"phase": "Active"}
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"].get("name", "")
    elif rtype.key == "secrets":
        obj.setdefault("type", "Opaque")
        for key, value in (obj.pop("stringData", None) or {}).items():
            obj.setdefault("data", {})[key] = base64.b64encode(str(value).encode()).decode()
    elif rtype.key == "services":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec.get("clusterIP") != "None":
            spec["clusterIP"] = next_service_ip()
        spec["clusterIPs"] = [spec["clusterIP"]]
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    elif rtype.key == CRD_KEY:
        obj["status"] = crd_status(obj, None)


def crd_status(crd: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Established at once (there is no controller to wait for); kept as is when names stay."""
    spec = crd.get("spec") or {}
    storage = [v.get("name") for v in spec.get("versions") or [] if v.get("storage")]
    old = (previous or {}).get("status") or {}
    if old.get("acceptedNames") == spec.get("names") and set(storage) <= set(old.get("storedVersions") or []):
        return copy.deepcopy(old)
    now = rfc3339()
    storage = sorted(set(storage) | set(old.get("storedVersions") or []))
    return {
        "acceptedNames": dict(spec.get("names") or {}),
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    }


def type_errors(rtype: ResourceType, obj: dict[str, Any]) -> list[FieldError]:
    """Kind-specific validation beyond ObjectMeta."""
    if rtype.key == "pods":
        return pod_errors(obj)
    if rtype.key == CRD_KEY:
        return validate_crd(obj)
    return []


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
