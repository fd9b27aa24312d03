"""Launch a test scenario script on N local processes with torchrun (gloo on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def torchrun(script: Path, nproc: int, *args: str, timeout: float = 600) -> None:
    """Run ``script args...`` under ``torchrun --standalone --nproc-per-node=nproc``; raise with
    the output's tail when it fails. One thread per rank: the ranks share this machine's cores."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", str(script), *map(str, args)]
    done = subprocess.run(command, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise AssertionError(f"torchrun failed ({done.returncode}):\n{done.stdout[-4000:]}\n"
                             f"{done.stderr[-8000:]}")
