"""Printing from one rank only."""

from __future__ import annotations

import os
from typing import Any


def global_rank() -> int:
    """This process's global rank: from the process group if it exists, else from torchrun's env."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def rank_zero_print(*args: Any, **kwargs: Any) -> None:
    """``print`` on global rank 0 only (flushed, so output is not lost when a job dies)."""
    if global_rank() == 0:
        print(*args, flush=True, **kwargs)
