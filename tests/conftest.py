"""Shared fixtures. Tests import helpers from this folder (tests/ is on sys.path via rootdir)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process trainers must form a world of one, whatever the outer environment says."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A running SeaweedFS S3 server; sets AWS_* in this process (and yields them for children).
    Each test gets a fresh bucket via ``s3_bucket``."""
    from s3_server import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def s3_bucket(s3, request: pytest.FixtureRequest) -> str:
    """``s3://<fresh bucket>`` on the test server."""
    import re

    import s3fs

    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    return f"s3://{bucket}"
