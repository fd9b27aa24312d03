"""The CRD in crds/ is what the pydantic models generate, and a valid structural schema."""

from __future__ import annotations

from pathlib import Path

import yaml
from dream_operator import api, crd
from dream_operator.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_crds_directory_matches_the_models():
    assert crd.stale(ROOT / "crds") == [], "crds/ is stale: run `dream-operator crd`"


def test_check_command_fails_on_drift(tmp_path, capsys):
    assert main(["crd", "--out", str(tmp_path)]) == 0
    assert main(["crd", "--out", str(tmp_path), "--check"]) == 0
    path = tmp_path / crd.CRD_FILE
    path.write_text(path.read_text().replace("maximum: 128", "maximum: 129"))
    assert main(["crd", "--out", str(tmp_path), "--check"]) == 1
    assert "differs from the API models" in capsys.readouterr().err


def test_crd_shape():
    body = yaml.safe_load((ROOT / "crds" / crd.CRD_FILE).read_text())
    spec = body["spec"]
    assert spec["names"]["shortNames"] == ["dtj"] and spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["name"] == api.VERSION and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 0]
    assert columns == ["Phase", "Nodes", "Restarts", "Step", "Age"]
    schema = version["schema"]["openAPIV3Schema"]
    nodes = schema["properties"]["spec"]["properties"]["nodes"]
    assert any("self.min <= self.max" in r["rule"] for r in nodes["x-kubernetes-validations"])
    assert schema["properties"]["status"]["properties"]["phase"]["enum"] == [p.value for p in api.Phase]


def test_schema_is_structural_and_its_rules_compile():
    from e2e.kubeapi.schema import check_crd_schema

    schema = crd.openapi_schema()
    assert check_crd_schema(schema, "spec.validation.openAPIV3Schema") == []

    def walk(node, path):
        if isinstance(node, dict):
            assert "anyOf" not in node and "$ref" not in node and "title" not in node, path
            assert node.get("additionalProperties") is not False, path
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")
    walk(schema, "schema")
