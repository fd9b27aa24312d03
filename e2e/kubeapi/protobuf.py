"""Just enough Kubernetes protobuf to read what kubectl's typed commands send.

``kubectl create namespace|configmap|secret|serviceaccount`` post protobuf bodies (everything
else kubectl does is JSON), and client-go does not fall back to JSON on a 415. So the emulator
decodes those four kinds; any other protobuf body is answered 415. Responses are always JSON,
which client-go accepts whatever it asked for.
"""

from __future__ import annotations

import base64
from typing import Any

MAGIC = b"k8s\x00"

# field number -> (name, type); a type is a scalar name or a nested spec.
_REF = {1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"), 5: ("apiVersion", "string"),
        6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")}
_META = {1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
         11: ("labels", "map"), 12: ("annotations", "map"), 13: ("ownerReferences", [_REF]), 14: ("finalizers", ["string"])}
_NAME = {1: ("name", "string")}
KINDS: dict[str, dict[int, tuple[str, Any]]] = {
    "Namespace": {1: ("metadata", _META), 2: ("spec", {1: ("finalizers", ["string"])})},
    "ConfigMap": {1: ("metadata", _META), 2: ("data", "map"), 3: ("binaryData", "map-bytes"), 4: ("immutable", "bool")},
    "Secret": {1: ("metadata", _META), 2: ("data", "map-bytes"), 3: ("type", "string"), 4: ("stringData", "map"),
               5: ("immutable", "bool")},
    "ServiceAccount": {1: ("metadata", _META), 2: ("secrets", [{**_NAME, 3: ("namespace", "string")}]),
                       3: ("imagePullSecrets", [_NAME]), 4: ("automountServiceAccountToken", "bool")},
}


class ProtobufError(ValueError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs; varints as ints, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated field")
            out.append((number, data[pos:pos + length]))
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


def _value(kind: Any, raw: int | bytes) -> Any:
    if kind == "bool":
        return bool(raw)
    if isinstance(raw, int):
        raise ProtobufError("expected a length-delimited field")
    if kind == "string":
        return raw.decode()
    return _message(kind, raw)


def _message(spec: dict[int, tuple[str, Any]], data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, raw in _fields(data):
        if number not in spec:
            continue  # fields this emulator does not need
        name, kind = spec[number]
        if kind in ("map", "map-bytes"):
            entry = dict(_fields(raw)) if isinstance(raw, bytes) else {}
            key, value = entry.get(1, b""), entry.get(2, b"")
            if not isinstance(key, bytes) or not isinstance(value, bytes):
                raise ProtobufError("bad map entry")
            out.setdefault(name, {})[key.decode()] = value.decode() if kind == "map" else base64.b64encode(value).decode()
        elif isinstance(kind, list):
            out.setdefault(name, []).append(_value(kind[0], raw))
        else:
            out[name] = _value(kind, raw)
    return out


def decode(body: bytes) -> dict[str, Any]:
    """A ``runtime.Unknown``-wrapped protobuf object as its JSON form."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf magic prefix")
    envelope = dict(_fields(body[len(MAGIC):]))
    type_meta = dict(_fields(envelope.get(1, b""))) if isinstance(envelope.get(1), bytes) else {}
    api_version = type_meta.get(1, b"")
    kind = type_meta.get(2, b"")
    raw = envelope.get(2, b"")
    if not isinstance(kind, bytes) or not isinstance(api_version, bytes) or not isinstance(raw, bytes):
        raise ProtobufError("bad envelope")
    spec = KINDS.get(kind.decode())
    if spec is None:
        raise ProtobufError(f"protobuf bodies of kind {kind.decode()!r} are not supported by this emulator; send JSON")
    obj = _message(spec, raw)
    obj["apiVersion"], obj["kind"] = api_version.decode(), kind.decode()
    return obj
