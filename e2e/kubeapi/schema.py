"""Structural OpenAPI v3 schemas of CustomResourceDefinitions: prune, default, validate.

The steps run in the real server's order for every write of a custom resource:
``prune`` (unknown fields; nulls of non-nullable fields) -> ``apply_defaults`` -> ``validate``
(OpenAPI keywords, then ``x-kubernetes-validations`` CEL rules via celpy, skipped like the real
server when a type error already makes them meaningless). Messages copy kube-openapi's
(``spec.x in body should be greater than or equal to 1``) so failures read the same.
On update, ``validate`` gets the old object: unchanged subtrees are not re-validated (CRD
validation ratcheting, on by default since 1.30) and transition rules see ``oldSelf``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
from typing import Any

import celpy
from celpy import celtypes

from .errors import FieldError, invalid, required

_MISSING = object()
_BLOCKING = ("TypeInvalid", "NotSupported")  # errors that stop CEL rules from running (hasBlockingErr)

OBJECT_META_FIELDS = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields",
}  # fmt: skip

_CEL_ENV = celpy.Environment()


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def type_name(value: Any) -> str:
    """JSON type of a decoded value, as Go's unstructured decoding would see it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _has_type(value: Any, wanted: str) -> bool:
    actual = type_name(value)
    if wanted == "integer":
        return actual == "integer" or (actual == "number" and float(value).is_integer())
    if wanted == "number":
        return actual in ("integer", "number")
    return actual == wanted


# ---------------------------------------------------------------------------------------------
# pruning and defaulting


def prune(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Remove fields the schema does not know (in place); return their paths (``spec.foo``)."""
    unknown: list[str] = []
    for key in list(obj):
        if key in ("apiVersion", "kind"):
            continue
        if key == "metadata":
            if isinstance(obj[key], dict):
                for meta_key in list(obj[key]):
                    if meta_key not in OBJECT_META_FIELDS:
                        unknown.append(f"metadata.{meta_key}")
                        del obj[key][meta_key]
            continue
        _prune_property(schema, obj, key, key, unknown)
    return unknown


def _prune_property(schema: dict[str, Any], parent: dict[str, Any], key: str, path: str, unknown: list[str]) -> None:
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    child_schema = props.get(key)
    if child_schema is None and isinstance(extra, dict):
        child_schema = extra
    if child_schema is None:
        if extra is True or schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        if schema.get("x-kubernetes-embedded-resource") and key in ("apiVersion", "kind", "metadata"):
            return
        unknown.append(path)
        del parent[key]
        return
    value = parent[key]
    if value is None and not child_schema.get("nullable"):
        # Non-nullable nulls are dropped before defaulting, so a default can fill them in.
        del parent[key]
        return
    _prune_value(child_schema, value, path, unknown)


def _prune_value(schema: dict[str, Any], value: Any, path: str, unknown: list[str]) -> None:
    if schema.get("x-kubernetes-int-or-string"):
        return
    if isinstance(value, dict):
        for key in list(value):
            _prune_property(schema, value, key, _child(path, key), unknown)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _prune_value(schema["items"], item, f"{path}[{index}]", unknown)


def apply_defaults(schema: dict[str, Any], value: Any, root: bool = True) -> None:
    """Fill ``default:`` values in place, top down (a defaulted object gets its own defaults)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, prop in props.items():
            if root and key == "metadata":
                continue
            if key not in value and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
            if key in value:
                apply_defaults(prop, value[key], root=False)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in props:
                    apply_defaults(extra, value[key], root=False)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item, root=False)


# ---------------------------------------------------------------------------------------------
# validation


def validate(schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[FieldError]:
    """All errors of ``obj`` (a whole custom resource) against a CRD version's schema."""
    errors: list[FieldError] = []
    rules: list[tuple[dict[str, Any], Any, str, Any]] = []
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    old_body = _MISSING if old is None else {k: v for k, v in old.items() if k not in ("apiVersion", "kind", "metadata")}
    root_schema = dict(schema)
    root_schema["properties"] = {k: v for k, v in (schema.get("properties") or {}).items() if k not in ("apiVersion", "kind", "metadata")}
    root_schema["required"] = [r for r in schema.get("required") or [] if r not in ("apiVersion", "kind", "metadata")]
    _validate(root_schema, body, "", old_body, errors, rules, top=True)
    if any(e.kind in _BLOCKING for e in errors):
        if rules:
            # What the real server says instead of running CEL on an ill-typed object.
            errors.append(FieldError("Invalid", "<nil>", "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation", "null"))
        return errors
    for node_schema, value, path, old_value in rules:
        if node_schema is root_schema:
            # Root rules see apiVersion, kind and metadata.name/generateName (and nothing else of metadata).
            value = _with_identity(value, obj)
            old_value = _MISSING if old is None else _with_identity(old_value, old)
        errors.extend(_run_rules(node_schema, value, path, old_value))
    return errors


def _with_identity(body: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    visible = {k: meta[k] for k in ("name", "generateName") if k in meta}
    return {**body, "apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""), "metadata": visible}


def _type_error(path: str, value: Any, wanted: str) -> FieldError:
    actual = type_name(value)
    return FieldError("TypeInvalid", path or "<nil>", f'{path or "body"} in body must be of type {wanted}: "{actual}"', actual)


def _validate(schema: dict[str, Any], value: Any, path: str, old: Any, errors: list[FieldError], rules: list, top: bool = False) -> None:
    if old is not _MISSING and value == old and not top:
        return  # ratcheting: an unchanged value is not re-validated on update
    if value is None:
        if not schema.get("nullable") and (schema.get("type") or schema.get("x-kubernetes-int-or-string")):
            errors.append(_type_error(path, value, schema.get("type") or "integer,string"))
        return
    if schema.get("x-kubernetes-int-or-string"):
        if type_name(value) not in ("integer", "string"):
            errors.append(_type_error(path, value, "integer,string"))
            return
    elif schema.get("type") and not _has_type(value, schema["type"]):
        errors.append(_type_error(path, value, schema["type"]))
        return
    if schema.get("x-kubernetes-validations"):
        rules.append((schema, value, path, old))
    where = path or "body"
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in schema["enum"])
        errors.append(FieldError("NotSupported", path, f"supported values: {supported}", value))
    if type_name(value) in ("integer", "number"):
        _check_number(schema, value, path, where, errors)
    elif isinstance(value, str):
        _check_string(schema, value, path, where, errors)
    elif isinstance(value, list):
        _check_array(schema, value, path, where, old, errors, rules)
    elif isinstance(value, dict):
        _check_object(schema, value, path, where, old, errors, rules)


def _check_number(schema: dict[str, Any], value: Any, path: str, where: str, errors: list[FieldError]) -> None:
    low, high = schema.get("minimum"), schema.get("maximum")
    excl_low, excl_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if low is not None and (value <= low if excl_low else value < low):
        word = "greater than" if excl_low else "greater than or equal to"
        errors.append(invalid(path, value, f"{where} in body should be {word} {low}"))
    if high is not None and (value >= high if excl_high else value > high):
        word = "less than" if excl_high else "less than or equal to"
        errors.append(invalid(path, value, f"{where} in body should be {word} {high}"))
    step = schema.get("multipleOf")
    if step and (value / step) != int(value / step):
        errors.append(invalid(path, value, f"{where} in body should be a multiple of {step}"))
    if schema.get("format") == "int32" and isinstance(value, int) and not -(2**31) <= value < 2**31:
        errors.append(invalid(path, value, f"{where} in body must be of type int32: \"{value}\""))


def _check_string(schema: dict[str, Any], value: str, path: str, where: str, errors: list[FieldError]) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(invalid(path, value, f"{where} in body should be at least {schema['minLength']} chars long"))
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(FieldError("TooLong", path, f"may not be more than {schema['maxLength']} bytes", value))
    pattern = schema.get("pattern")
    if pattern and not re.search(pattern, value):
        errors.append(invalid(path, value, f"{where} in body should match '{pattern}'"))
    fmt = schema.get("format")
    if fmt in _FORMATS and not _FORMATS[fmt].match(value):
        errors.append(invalid(path, value, f'{where} in body must be of type {fmt}: "{value}"'))


# The string formats whose violations people actually hit; go-openapi's parsers are permissive
# (date-time accepts a space separator, no seconds, or no zone), and so are these patterns.
_FORMATS = {
    "date-time": re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|z|[+-]\d{2}:?\d{2})?$"),
    "date": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
    "uuid": re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"),
}


def _check_array(schema: dict[str, Any], value: list, path: str, where: str, old: Any, errors: list[FieldError], rules: list) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(invalid(path, len(value), f"{where} in body should have at least {schema['minItems']} items"))
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(FieldError("TooMany", path, f"must have at most {schema['maxItems']} items", len(value)))
    list_type = schema.get("x-kubernetes-list-type")
    map_keys = schema.get("x-kubernetes-list-map-keys") or []
    seen: list[Any] = []
    old_by_key: dict[Any, Any] = {}
    if list_type == "map" and isinstance(old, list):
        old_by_key = {_list_key(i, map_keys): i for i in old if isinstance(i, dict)}
    items = schema.get("items") if isinstance(schema.get("items"), dict) else None
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if list_type in ("set", "map"):
            identity = _list_key(item, map_keys) if list_type == "map" and isinstance(item, dict) else item
            if identity in seen:
                errors.append(FieldError("Duplicate", item_path, "", identity if list_type == "set" else dict(zip(map_keys, identity))))
            seen.append(identity)
        if items is not None:
            item_old = old_by_key.get(_list_key(item, map_keys), _MISSING) if old_by_key and isinstance(item, dict) else _MISSING
            _validate(items, item, item_path, item_old, errors, rules)


def _list_key(item: dict[str, Any], keys: list[str]) -> tuple:
    return tuple(repr(item.get(k)) for k in keys)


def _check_object(schema: dict[str, Any], value: dict, path: str, where: str, old: Any, errors: list[FieldError], rules: list) -> None:
    for name in schema.get("required") or []:
        if name not in value:
            errors.append(required(_child(path, name)))
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        errors.append(invalid(path, len(value), f"{where} in body should have at least {schema['minProperties']} properties"))
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(FieldError("TooMany", path, f"must have at most {schema['maxProperties']} items", len(value)))
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    old_map = old if isinstance(old, dict) else {}
    for key, item in value.items():
        if key in props:
            _validate(props[key], item, _child(path, key), old_map.get(key, _MISSING), errors, rules)
        elif isinstance(extra, dict):
            _validate(extra, item, f"{path}[{key}]" if path else key, old_map.get(key, _MISSING), errors, rules)


# ---------------------------------------------------------------------------------------------
# CEL


@functools.lru_cache(maxsize=1024)
def compile_rule(rule: str) -> Any:
    """A celpy program for a rule; raises celpy's CELParseError on bad syntax."""
    return _CEL_ENV.program(_CEL_ENV.compile(rule))


def _field_path_suffix(field_path: str) -> list[str]:
    """``.spec.min`` / ``['a.b'].c`` -> path parts."""
    return [a or b for a, b in re.findall(r"\.([A-Za-z0-9_$-]+)|\['([^']*)'\]", field_path)]


def _run_rules(schema: dict[str, Any], value: Any, path: str, old: Any) -> list[FieldError]:
    errors = []
    activation: dict[str, Any] = {"self": celpy.json_to_cel(value)}
    if old is not _MISSING:
        activation["oldSelf"] = celpy.json_to_cel(old)
    for rule in schema["x-kubernetes-validations"]:
        text = rule.get("rule", "")
        if "oldSelf" in text and old is _MISSING:
            continue  # transition rules only run on update, when there is an old value
        try:
            result = compile_rule(text).evaluate(activation)
        except Exception as exc:  # noqa: BLE001 - celpy raises a variety of evaluation errors
            result = exc
        target = path
        for part in _field_path_suffix(rule.get("fieldPath", "")):
            target = _child(target, part)
        shown = schema.get("type") or type_name(value)
        if isinstance(result, Exception):
            errors.append(invalid(target or "<nil>", shown, f"rule evaluation error (emulated with celpy): {text}: {result}"))
            continue
        if isinstance(result, celtypes.BoolType) and bool(result):
            continue
        message = rule.get("message") or f"failed rule: {text.strip()}"
        if rule.get("messageExpression"):
            with contextlib.suppress(Exception):  # the real server also falls back to the message
                message = str(compile_rule(rule["messageExpression"]).evaluate(activation))
        reason = rule.get("reason", "FieldValueInvalid")
        target = target or "<nil>"
        if reason == "FieldValueForbidden":
            errors.append(FieldError("Forbidden", target, message))
        elif reason == "FieldValueRequired":
            errors.append(FieldError("Required", target, message))
        elif reason == "FieldValueDuplicate":
            errors.append(FieldError("Duplicate", target, message, shown))
        else:
            errors.append(invalid(target, shown, message))
    return errors


# ---------------------------------------------------------------------------------------------
# CRD schema checks


def check_crd_schema(schema: Any, path: str) -> list[FieldError]:
    """The structural-schema and CEL-compilation checks the real server does on a CRD."""
    if not isinstance(schema, dict):
        return [required(path)]
    errors: list[FieldError] = []
    if schema.get("type") != "object":
        errors.append(required(f"{path}.type", "must not be empty at the root") if not schema.get("type")
                      else FieldError("Invalid", f"{path}.type", "must be object at the root", schema.get("type")))
    _check_node(schema, path, errors, root=True)
    return errors


def _check_node(schema: dict[str, Any], path: str, errors: list[FieldError], root: bool = False) -> None:
    for index, rule in enumerate(schema.get("x-kubernetes-validations") or []):
        rule_path = f"{path}.x-kubernetes-validations[{index}]"
        for key in ("rule", "messageExpression"):
            text = rule.get(key)
            if key == "rule" and not text:
                errors.append(required(f"{rule_path}.rule"))
            if text:
                try:
                    compile_rule(text)
                except Exception as exc:  # noqa: BLE001 - any parse failure is a compile error
                    errors.append(invalid(f"{rule_path}.{key}", text, f"compilation failed: {str(exc).strip()}"))
    if "default" in schema and not root:
        for err in validate_value(schema, schema["default"]):
            errors.append(invalid(f"{path}.default", schema["default"], str(err)))
    for name, prop in (schema.get("properties") or {}).items():
        _check_child(prop, f"{path}.properties[{name}]", "specified object fields", errors)
    if isinstance(schema.get("items"), dict):
        _check_child(schema["items"], f"{path}.items", "specified array items", errors)
    if isinstance(schema.get("additionalProperties"), dict):
        _check_child(schema["additionalProperties"], f"{path}.additionalProperties", "specified object fields", errors)


def _check_child(schema: Any, path: str, what: str, errors: list[FieldError]) -> None:
    if not isinstance(schema, dict):
        errors.append(invalid(path, schema, "must be an object"))
        return
    untyped_ok = schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")
    if not schema.get("type") and not untyped_ok:
        errors.append(required(f"{path}.type", f"must not be empty for {what}"))
    _check_node(schema, path, errors)


def validate_value(schema: dict[str, Any], value: Any) -> list[FieldError]:
    """Validate a bare value (a default) against a node schema, CEL included."""
    errors: list[FieldError] = []
    rules: list = []
    _validate(schema, value, "", _MISSING, errors, rules, top=True)
    if not any(e.kind in _BLOCKING for e in errors):
        for node_schema, node_value, node_path, node_old in rules:
            errors.extend(_run_rules(node_schema, node_value, node_path, node_old))
    return errors
