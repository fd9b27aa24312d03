"""Callbacks: hooks into the training lifecycle."""

from dream_trainer.callbacks.callback import HOOKS, Callback, CallbackCollection, RankZeroCallback
from dream_trainer.callbacks.progress import ProgressCallback


def __getattr__(name: str) -> object:
    # OptimizeFSDP depends on the trainer mixins, which import this package: load it lazily.
    if name == "OptimizeFSDP":
        from dream_trainer.callbacks.optimize_fsdp import OptimizeFSDP

        return OptimizeFSDP
    raise AttributeError(f"module 'dream_trainer.callbacks' has no attribute {name!r}")


__all__ = ["HOOKS", "Callback", "CallbackCollection", "OptimizeFSDP", "ProgressCallback",
           "RankZeroCallback"]
