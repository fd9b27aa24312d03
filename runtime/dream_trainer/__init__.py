"""Dream Trainer: composable, DTensor-native distributed training.

The top-level names are imported lazily so that light modules such as
:mod:`dream_trainer.contract` (shared with the operator, which never imports torch)
can be used without pulling in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "BaseTrainer": "dream_trainer.trainer.base",
    "BaseTrainerConfig": "dream_trainer.trainer.base",
    "DreamTrainer": "dream_trainer.trainer.dream",
    "DreamTrainerConfig": "dream_trainer.trainer.dream",
}

__all__ = [*_LAZY, "__version__"]

if TYPE_CHECKING:
    from dream_trainer.trainer.base import BaseTrainer, BaseTrainerConfig
    from dream_trainer.trainer.dream import DreamTrainer, DreamTrainerConfig


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dream_trainer' has no attribute {name!r}")
