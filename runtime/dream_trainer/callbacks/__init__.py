"""Callbacks: hooks into the training lifecycle."""

from dream_trainer.callbacks.callback import HOOKS, Callback, CallbackCollection, RankZeroCallback
from dream_trainer.callbacks.progress import ProgressCallback
from dream_trainer.callbacks.progress_server import ProgressServerCallback


_LAZY = {
    "OptimizeFSDP": "dream_trainer.callbacks.optimize_fsdp",
    "CheckpointCallback": "dream_trainer.callbacks.checkpoint",
    "AsyncCheckpointCallback": "dream_trainer.callbacks.async_checkpoint",
    "ExportCallback": "dream_trainer.callbacks.export",
}


def __getattr__(name: str) -> object:
    # These depend on the trainer mixins, which import this package: load them lazily.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dream_trainer.callbacks' has no attribute {name!r}")


__all__ = ["HOOKS", "AsyncCheckpointCallback", "Callback", "CallbackCollection",
           "CheckpointCallback", "ExportCallback", "OptimizeFSDP", "ProgressCallback",
           "ProgressServerCallback", "RankZeroCallback"]
