"""torch.compile per block, and compiled autograd."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn as nn

from dream_trainer.parallel.blocks import blocks

logger = logging.getLogger(__name__)


def apply_compile(model: nn.Module) -> nn.Module:
    """Compile each repeated block in place (``module.compile()``), or the whole model if it has
    none. Blocks share code, so Dynamo compiles one graph and reuses it for every layer; compiling
    before FSDP keeps FSDP's hooks outside the graphs, so no graph breaks at unit boundaries."""
    found = blocks(model)
    for block in found or [model]:
        block.compile(fullgraph=bool(found))
    logger.info("compiled %d blocks of %s", len(found) or 1, type(model).__name__)
    return model


@contextlib.contextmanager
def compiled_autograd(enabled: bool) -> Iterator[None]:
    """Run backward through compiled autograd (captures the whole backward graph, including
    FSDP's hooks, for more fusion and overlap) when ``enabled``."""
    if not enabled:
        yield
        return
    with torch._dynamo.compiled_autograd._enable(torch.compile()):
        yield
