"""Callbacks: hooks into the training lifecycle."""

from dream_trainer.callbacks.callback import HOOKS, Callback, CallbackCollection, RankZeroCallback
from dream_trainer.callbacks.progress import ProgressCallback

__all__ = ["HOOKS", "Callback", "CallbackCollection", "ProgressCallback", "RankZeroCallback"]
