"""Lazy imports of the optional Hugging Face packages (the ``data`` extra)."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA_HINT = "pip install 'dream-trainer[data]'"


def require(module: str, feature: str = "dream_trainer.data.hf") -> ModuleType:
    """Import ``module`` (``datasets``, ``transformers`` or ``tokenizers``) or raise an
    ImportError that names the package and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        raise ImportError(
            f"{feature} needs the Hugging Face {package!r} package, which is not installed "
            f"({error}). Fix: {EXTRA_HINT} (datasets, transformers and tokenizers)") from error
