"""QuantizeMixin: FP8 training with torchao's float8 linears, with module exclusion filters."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from dream_trainer.configs.errors import ConfigError, require_bool, require_choice
from dream_trainer.trainer.mixins.setup.models import ModelSetupMixin

logger = logging.getLogger(__name__)

ModuleFilter = Callable[[nn.Module, str], bool]
"""``filter(module, fqn) -> bool``: True keeps the module eligible for conversion."""


class ExcludeModuleByName:
    """Exclude modules whose fully qualified name is one of ``names`` (e.g. ``"output"``)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = set(names)

    def __call__(self, module: nn.Module, fqn: str) -> bool:
        return fqn not in self.names


class ExcludeSubmodules:
    """Exclude every module at or below the given prefixes (e.g. ``"layers.0"``)."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        self.prefixes = tuple(prefixes)

    def __call__(self, module: nn.Module, fqn: str) -> bool:
        return not any(fqn == p or fqn.startswith(p + ".") for p in self.prefixes)


def fp8_eligible(module: nn.Module, fqn: str) -> bool:
    """FP8 GEMMs need both matrix dimensions divisible by 16."""
    return (isinstance(module, nn.Linear) and module.in_features % 16 == 0
            and module.out_features % 16 == 0)


def convert_to_fp8(model: nn.Module, filters: Iterable[ModuleFilter] = (),
                   recipe: Literal["tensorwise", "rowwise"] = "tensorwise") -> list[str]:
    """Swap the eligible ``nn.Linear`` modules of ``model`` for torchao ``Float8Linear``s (in
    place, also on the meta device) and return their names. A module is converted when
    :func:`fp8_eligible` and every filter accept it."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as err:
        raise ImportError("FP8 training needs torchao: pip install 'dream-trainer[fp8]'") from err
    checks = [fp8_eligible, *filters]
    converted: list[str] = []

    def accept(module: nn.Module, fqn: str) -> bool:
        ok = all(check(module, fqn) for check in checks)
        if ok:
            converted.append(fqn)
        return ok

    config = (Float8LinearConfig.from_recipe_name(recipe) if recipe != "tensorwise"
              else Float8LinearConfig())
    convert_to_float8_training(model, config=config, module_filter_fn=accept)
    return converted


def fp8_supported(device: torch.device) -> bool:
    """FP8 matmuls need a CUDA GPU of compute capability 8.9 (Ada) or newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


@dataclass(kw_only=True)
class QuantizeConfigMixin:
    """Quantised-training options."""

    fp8: bool = False
    """Train the eligible linear layers in FP8 (torchao float8)."""
    fp8_recipe: Literal["tensorwise", "rowwise"] = "tensorwise"

    def __post_init__(self) -> None:
        require_bool(f"{type(self).__name__}.fp8", self.fp8)
        require_choice(f"{type(self).__name__}.fp8_recipe", self.fp8_recipe,
                       ("tensorwise", "rowwise"))
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]


class QuantizeMixin(ModelSetupMixin):
    """Converts models to FP8 training after ``post_configure_models``, before any parallelism
    (TP and FSDP then shard the FP8 linears; FSDP can all-gather in FP8)."""

    def quantize_module_filters(self) -> dict[str, list[ModuleFilter]]:
        """Per model name, filters that exclude modules from FP8 (default: keep the output
        projection named ``output`` in high precision, where FP8 hurts accuracy most)."""
        return {name: [ExcludeModuleByName(["output"])] for name in self.named_models()}

    def convert_models(self) -> None:
        super().convert_models()
        if not getattr(self.config, "fp8", False):
            return
        if not fp8_supported(self.world.device):
            raise ConfigError(f"{type(self.config).__name__}.fp8", True,
                              f"FP8 matmuls need a CUDA GPU with compute capability >= 8.9; this "
                              f"process runs on {self.world.device}", "set fp8=False")
        filters = self.quantize_module_filters()
        for name, model in self.named_models().items():
            converted = convert_to_fp8(model, filters.get(name, []), self.config.fp8_recipe)
            logger.info("FP8: converted %d linears of %s", len(converted), name)
