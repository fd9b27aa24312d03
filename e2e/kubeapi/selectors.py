"""Label and field selectors with the grammar of k8s.io/apimachinery/pkg/labels and /fields."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import bad_request

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*$")
_CMP_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|!=|=|>|<)\s*(?P<value>{_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!", "gt", "lt"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            # A missing key satisfies "notin" and "!=" (documented apimachinery behaviour).
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if not present:
            return False
        try:
            number, bound = int(value), int(next(iter(self.values)))  # type: ignore[arg-type]
        except ValueError:
            return False
        return number > bound if self.op == "gt" else number < bound


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( ... )``."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse ``a=b,c!=d,e in (x,y),!f``; raises a 400 APIError on bad syntax."""
    if not text or not text.strip():
        return []
    requirements: list[Requirement] = []
    for part in _split_top_level(text):
        if not part.strip():
            raise bad_request(f"unable to parse requirement: found '', expected: identifier in {text!r}")
        if m := _SET_RE.match(part):
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            requirements.append(Requirement(m["key"], m["op"], values))
        elif m := _CMP_RE.match(part):
            op = {"=": "in", "==": "in", "!=": "notin", ">": "gt", "<": "lt"}[m["op"]]
            if op in ("gt", "lt") and not re.fullmatch(r"-?\d+", m["value"]):
                raise bad_request(f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {part.strip()!r}")
            requirements.append(Requirement(m["key"], op, frozenset([m["value"]])))
        elif m := _EXISTS_RE.match(part):
            requirements.append(Requirement(m["key"], "!" if m["neg"] else "exists"))
        else:
            raise bad_request(f"unable to parse requirement: invalid label selector {part.strip()!r}")
    return requirements


def match_labels(requirements: list[Requirement], obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    equal: bool


def parse_field_selector(text: str | None, allowed: set[str]) -> list[FieldRequirement]:
    """Parse ``a=b,c!=d``; unknown fields are a 400 like the real server."""
    if not text or not text.strip():
        return []
    out: list[FieldRequirement] = []
    for part in text.split(","):
        m = re.match(r"^\s*([^=!\s]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        name, op, value = m.groups()
        if name not in allowed:
            raise bad_request(f'field label not supported: {name}')
        out.append(FieldRequirement(name, value, op != "!="))
    return out


def field_value(obj: dict[str, Any], path: str) -> str:
    """The string a field selector compares against; a missing field reads as ""."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def match_fields(requirements: list[FieldRequirement], obj: dict[str, Any]) -> bool:
    return all((field_value(obj, r.field) == r.value) == r.equal for r in requirements)


def make_filter(
    label_selector: str | None, field_selector: str | None, allowed_fields: set[str]
) -> Callable[[dict[str, Any]], bool]:
    """Parse both selectors once (raising 400 early) and return a predicate on objects."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector, allowed_fields)
    return lambda obj: match_labels(labels, obj) and match_fields(fields, obj)

