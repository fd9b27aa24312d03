"""API errors as the real kube-apiserver reports them: ``Status`` objects and field errors.

Message formats follow k8s.io/apimachinery (``field.Error.Error()``, ``errors.NewInvalid`` ...)
so that tests asserting on server messages read the same as against a real cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_OMIT = object()

# field.ErrorType -> (printed type, Status cause reason)
_FIELD_TYPES = {
    "Required": ("Required value", "FieldValueRequired"),
    "Invalid": ("Invalid value", "FieldValueInvalid"),
    "TypeInvalid": ("Invalid value", "FieldValueTypeInvalid"),
    "NotSupported": ("Unsupported value", "FieldValueNotSupported"),
    "Forbidden": ("Forbidden", "FieldValueForbidden"),
    "Duplicate": ("Duplicate value", "FieldValueDuplicate"),
    "TooLong": ("Too long", "FieldValueTooLong"),
    "TooMany": ("Too many", "FieldValueTooMany"),
    "NotFound": ("Not found", "FieldValueNotFound"),
}


def format_value(value: Any) -> str:
    """Render a bad value the way Go's field.Error does (strings quoted, numbers plain)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class FieldError:
    """One ``field.Error``: ``<field>: <Type>[: <value>][: <detail>]``."""

    kind: str  # a key of _FIELD_TYPES
    field: str
    detail: str = ""
    value: Any = _OMIT

    @property
    def reason(self) -> str:
        return _FIELD_TYPES[self.kind][1]

    def body(self) -> str:
        """``ErrorBody()``: everything after ``<field>: ``."""
        text = _FIELD_TYPES[self.kind][0]
        # Required/Forbidden/TooLong never print the value (as in apimachinery).
        if self.value is not _OMIT and self.kind not in ("Required", "Forbidden", "TooLong"):
            text += ": " + format_value(self.value)
        if self.detail:
            text += ": " + self.detail
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.body(), "field": self.field}


def invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError("Invalid", path, detail, value)


def required(path: str, detail: str = "") -> FieldError:
    return FieldError("Required", path, detail)


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError("Forbidden", path, detail)


@dataclass
class APIError(Exception):
    """An error answered as a ``Status`` object with an HTTP code."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


def _qualified(resource: str, group: str) -> str:
    """``pods`` or ``widgets.example.dev``: how apimachinery names a GroupResource."""
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> APIError:
    return APIError(
        404,
        "NotFound",
        f'{_qualified(resource, group)} "{name}" not found',
        {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource},
    )


def already_exists(resource: str, group: str, name: str) -> APIError:
    return APIError(
        409,
        "AlreadyExists",
        f'{_qualified(resource, group)} "{name}" already exists',
        {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource},
    )


def conflict(resource: str, group: str, name: str, why: str) -> APIError:
    return APIError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {why}',
        {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource},
    )


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def invalid_object(kind: str, group: str, name: str, errors: list[FieldError]) -> APIError:
    """``errors.NewInvalid``: one error prints bare, several print as ``[a, b]``."""
    text = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    qualified = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {"name": name, "kind": kind, "causes": [e.cause() for e in errors]}
    if group:
        details["group"] = group
    return APIError(422, "Invalid", f'{qualified} "{name}" is invalid: {text}', details)


def bad_request(message: str) -> APIError:
    return APIError(400, "BadRequest", message)


def forbidden_request(message: str, **details: Any) -> APIError:
    return APIError(403, "Forbidden", message, details)


def gone(message: str) -> APIError:
    # The real server answers a too-old resourceVersion with reason Expired and code 410.
    return APIError(410, "Expired", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> APIError:
    return APIError(405, "MethodNotAllowed", message)


def unsupported_media(content_type: str) -> APIError:
    return APIError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type!r})")
