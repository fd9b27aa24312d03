"""Callbacks: hooks into the training lifecycle."""

from dream_trainer.callbacks.callback import HOOKS, Callback, CallbackCollection, RankZeroCallback
from dream_trainer.callbacks.progress import ProgressCallback
from dream_trainer.callbacks.progress_server import ProgressServerCallback


_LAZY = {
    "OptimizeFSDP": "dream_trainer.callbacks.optimize_fsdp",
    "CheckpointCallback": "dream_trainer.callbacks.checkpoint",
    "AsyncCheckpointCallback": "dream_trainer.callbacks.async_checkpoint",
    "ExportCallback": "dream_trainer.callbacks.export",
    "LoggerCallback": "dream_trainer.callbacks.logger",
    # Training utilities
    "EarlyStoppingCallback": "dream_trainer.callbacks.early_stopping",
    "EMACallback": "dream_trainer.callbacks.ema",
    "BestModelCallback": "dream_trainer.callbacks.best_model",
    "best_checkpoint": "dream_trainer.callbacks.best_model",
    "LRFinderCallback": "dream_trainer.callbacks.lr_finder",
    "LRFinderResult": "dream_trainer.callbacks.lr_finder",
    "find_learning_rate": "dream_trainer.callbacks.lr_finder",
    "set_learning_rate": "dream_trainer.callbacks.lr_finder",
    # Progress, summaries, gc, profiling, benchmarking
    "ProgressBarCallback": "dream_trainer.callbacks.progress_bar",
    "ModelSummaryCallback": "dream_trainer.callbacks.summary",
    "GarbageCollectionCallback": "dream_trainer.callbacks.garbage_collection",
    "ProfilerCallback": "dream_trainer.callbacks.profiler",
    "BenchmarkCallback": "dream_trainer.callbacks.benchmark",
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
__all__ += ["BestModelCallback", "EMACallback", "EarlyStoppingCallback", "LRFinderCallback",
            "LRFinderResult", "best_checkpoint", "find_learning_rate", "set_learning_rate"]
__all__ += ["LoggerCallback"]
__all__ += ["BenchmarkCallback", "GarbageCollectionCallback", "ModelSummaryCallback",
            "ProfilerCallback", "ProgressBarCallback"]
