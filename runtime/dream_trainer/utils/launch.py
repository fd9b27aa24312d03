"""Launching: run a function on every rank, spawning torchrun when more devices exist."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from dream_trainer.world.distributed_world import launched_by_torchrun


def torchrun_command(script: str, nproc: int, args: list[str]) -> list[str]:
    """The command that runs ``script`` on ``nproc`` local processes (standalone rendezvous)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", script, *args]


def distributed_launch(main: Callable[..., Any], *args: Any, nproc: int | None = None,
                       **kwargs: Any) -> Any:
    """Run ``main(*args, **kwargs)`` on every rank.

    Under torchrun (or a pod the operator started) this just calls ``main``. Started as a plain
    ``python train.py`` it re-runs the script under torchrun with one process per visible GPU (or
    ``nproc``), and exits with its status; with one device it calls ``main`` in this process.
    The process group is destroyed when ``main`` returns.
    """
    if not launched_by_torchrun():
        if nproc is None:
            import torch

            nproc = torch.cuda.device_count() if torch.cuda.is_available() else 1
        if nproc > 1:
            command = torchrun_command(sys.argv[0], nproc, sys.argv[1:])
            sys.exit(subprocess.call(command, env=os.environ.copy()))
    try:
        return main(*args, **kwargs)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
