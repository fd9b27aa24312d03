"""docs/dreamtrainjob.md is what the models generate, and names every field, enum value and rule."""

from __future__ import annotations

import re
import typing
from enum import Enum
from pathlib import Path

import pytest
import yaml
from dream_operator import api, crd
from dream_operator.cli import main
from dream_operator.crd_docs import reference_markdown
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "dreamtrainjob.md"


@pytest.fixture(scope="module")
def markdown() -> str:
    return reference_markdown()


def test_committed_docs_match_the_models(markdown):
    assert DOCS.read_text() == markdown, (
        "docs/dreamtrainjob.md is stale: run `dream-operator crd --docs docs/dreamtrainjob.md`"
    )


def _models(annotation) -> list[type]:
    """Every BaseModel / Enum class inside a field annotation (Optional, list, Annotated, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, (BaseModel, Enum)):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _paths(model: type[BaseModel], prefix: str) -> list[str]:
    """The manifest path of every field of ``model``, by alias, recursing into nested models."""
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}"
        paths.append(path)
        origin = typing.get_origin(field.annotation)
        for sub in _models(field.annotation):
            if issubclass(sub, BaseModel):
                is_list = origin is list or any(
                    typing.get_origin(a) is list for a in typing.get_args(field.annotation)
                )
                paths += _paths(sub, f"{path}[]" if is_list else path)
    return paths


def test_every_spec_and_status_field_has_a_row(markdown):
    paths = _paths(api.DreamTrainJobSpec, "spec") + _paths(api.DreamTrainJobStatus, "status")
    assert "spec.checkpoint.secretRef.name" in paths and "spec.env[].valueFrom" in paths
    assert "status.conditions[].lastTransitionTime" in paths
    rows = set(re.findall(r"^\| `([^`]+)` \|", markdown, re.MULTILINE))
    assert [p for p in paths if p not in rows] == []
    assert {"spec", "status", "spec.podTemplate.affinity"} <= rows


def test_one_table_per_object(markdown):
    headings = re.findall(r"^## `([^`]+)`$", markdown, re.MULTILINE)
    for name in ["spec", "spec.nodes", "spec.checkpoint", "spec.restartPolicy", "spec.runPolicy",
                 "spec.podTemplate", "spec.wandb", "status", "status.conditions[]"]:
        assert name in headings
    assert len(headings) == len(set(headings))


def test_types_enums_defaults_constraints_and_rules(markdown):
    for enum in (api.ImagePullPolicy, api.CleanPodPolicy, api.Phase, api.ConditionType,
                 api.WandBMode):
        assert ", ".join(f"`{e.value}`" for e in enum) in markdown, enum
    row = next(line for line in markdown.splitlines() if line.startswith("| `spec.nprocPerNode`"))
    assert row == "| `spec.nprocPerNode` | integer | `1` | >= 1; <= 128 |  |"
    assert "| `spec.podTemplate.affinity` | object (passed through as given) |" in markdown
    assert "| `spec.envFrom` | array of object (passed through as given) |" in markdown
    assert "pattern `^(True\\|False\\|Unknown)$`" in markdown  # pipes escaped inside tables
    assert "`1`" in markdown and '`"Running"`' in markdown
    rules = crd.openapi_schema()["properties"]["spec"]["properties"]["nodes"][
        "x-kubernetes-validations"]
    for rule in rules:
        assert f"- {rule['message']} (`{rule['rule']}`)" in markdown
    assert "metadata.name must be at most 56 characters" in markdown
    assert "<name>" not in markdown  # would be read as an HTML tag


def test_example_manifest_is_a_valid_job(markdown):
    block = re.search(r"```yaml\n(.*?)```", markdown, re.DOTALL).group(1)
    job = api.parse(api.DreamTrainJob, yaml.safe_load(block))
    assert job.api_version == "dreamtrainer.dev/v1alpha1" and job.kind == "DreamTrainJob"
    assert "short name `dtj`" in markdown


def test_cli_writes_and_checks_the_docs(tmp_path, capsys, markdown):
    docs = tmp_path / "docs" / "ref.md"
    out = str(tmp_path / "crds")
    assert main(["crd", "--out", out, "--docs", str(docs)]) == 0
    assert docs.read_text() == markdown and str(docs) in capsys.readouterr().out
    assert main(["crd", "--out", out, "--docs", str(docs), "--check"]) == 0
    docs.write_text(markdown.replace("<= 128", "<= 129"))
    assert main(["crd", "--out", out, "--docs", str(docs), "--check"]) == 1
    assert f"run `dream-operator crd --docs {docs}`" in capsys.readouterr().err
    docs.unlink()
    assert main(["crd", "--out", out, "--docs", str(docs), "--check"]) == 1
    assert main(["crd", "--out", out, "--check"]) == 0  # without --docs only crds/ is checked
