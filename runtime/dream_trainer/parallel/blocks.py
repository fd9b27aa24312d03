"""Finding the repeated blocks of a model: the unit of FSDP wrapping, AC and compile."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn


def _block_containers(model: nn.Module) -> list[nn.ModuleList | nn.ModuleDict]:
    """The outermost ModuleLists/ModuleDicts of ``model`` (those not inside another one)."""
    found: list[nn.ModuleList | nn.ModuleDict] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)) and module is not model:
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


def blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: children of the outermost ModuleLists/ModuleDicts, in order."""
    out: list[nn.Module] = []
    for container in _block_containers(model):
        out.extend(container.values() if isinstance(container, nn.ModuleDict)
                   else container.children())
    return out


def replace_blocks(model: nn.Module, fn: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every block by ``fn(block)`` in place (names are kept); returns the count."""
    count = 0
    for container in _block_containers(model):
        keys = list(container.keys()) if isinstance(container, nn.ModuleDict) else range(
            len(container))
        for key in keys:
            container[key] = fn(container[key])  # type: ignore[index]
            count += 1
    return count
