"""The DreamTrainJob operator (kopf). It shares the environment contract with the runtime through
:mod:`dream_trainer.contract`, which imports neither torch nor kopf; the operator never imports
torch."""

from dream_trainer import contract

__all__ = ["contract"]
