"""The scalar entries of a step's result dict, as tensors that can be summed without a host sync."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed.tensor import DTensor


def scalar_items(result: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """``(key, 0-d float tensor)`` for each scalar entry of ``result`` (a one-element tensor, a
    DTensor gathered to its full value, or a Python number); anything else is skipped, as is a
    ``result`` that is not a dict. Tensors stay on their device and are detached."""
    if not isinstance(result, dict):
        return
    for key, value in result.items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            yield key, value.detach().float().reshape(())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, torch.tensor(float(value))
