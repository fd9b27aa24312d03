"""Generate the DreamTrainJob CustomResourceDefinition from the pydantic models in :mod:`.api`.

``dream-operator crd`` writes ``crds/``; a test fails when the files there and the models
disagree. Pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema, so this
module inlines ``$ref``s, turns ``Optional[X]`` into an optional ``X``, drops what structural
schemas forbid (``additionalProperties: false``, ``title``) and keeps the rest (ranges, enums,
patterns, CEL rules, scalar defaults).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from . import api

CRD_FILE = f"{api.GROUP}_{api.PLURAL}.yaml"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Nodes", "type": "integer", "jsonPath": ".status.readyNodes",
     "description": "Worker pods running"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss", "priority": 1},
    {"name": "Checkpoint", "type": "string", "jsonPath": ".status.lastCheckpoint", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP = {"title", "additionalProperties", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic JSON-schema node into its structural OpenAPI v3 form."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if node.get("x-kubernetes-int-or-string"):
        return {"x-kubernetes-int-or-string": True}
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:  # Optional[X] is just an optional X
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            return _structural({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP and not (key == "additionalProperties" and isinstance(value, dict)):
            continue
        if key == "default" and (value is None or isinstance(value, (dict, list))):
            continue  # object defaults are filled by the models; only scalars go to the server
        if key == "description":
            out[key] = " ".join(value.split()).replace("``", "`")
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _structural(value, defs)
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("properties", None)
    return out


def _model_schema(model: type[api.BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(schema, schema.get("$defs", {}))


def openapi_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the served version."""
    status = _model_schema(api.DreamTrainJobStatus)
    status["properties"]["conditions"].update(
        {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
    )
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": _model_schema(api.DreamTrainJobSpec),
            "status": status,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {api.MAX_JOB_NAME_LENGTH}",
                "message": f"metadata.name must be at most {api.MAX_JOB_NAME_LENGTH} characters "
                "(worker hostnames are <name>-<node rank>, a 63-character DNS label)",
            }
        ],
    }


def dreamtrainjob_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def render() -> dict[str, str]:
    """File name -> YAML text of everything under ``crds/``."""
    header = "# Generated by `dream-operator crd` from dream_operator/api.py. Do not edit.\n"
    dump = lambda obj: yaml.safe_dump(obj, sort_keys=False, width=100)
    return {
        CRD_FILE: header + dump(dreamtrainjob_crd()),
    }


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def stale(directory: Path) -> list[str]:
    """Files in ``directory`` that differ from what the models generate."""
    return [
        name for name, text in render().items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]
