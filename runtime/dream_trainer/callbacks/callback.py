"""Callbacks: code that runs at fixed points of the trainer's lifecycle.

Hooks are called in this order during ``fit()``::

    pre_configure, post_configure, pre_setup, post_setup, pre_fit,
      [sanity validation: pre_validation_epoch, (pre|post)_validation_step..., post_validation_epoch]
      per epoch: pre_epoch, pre_train_epoch,
        per batch: pre_train_step, [pre_optimizer_step, post_optimizer_step,
                   pre_optimizer_zero_grad, post_optimizer_zero_grad], post_train_step,
                   [validation as above, when due]
        post_train_epoch, post_epoch,
    post_fit          (on_interrupt instead, if fit() raises)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, get_args

import torch.nn as nn
from torch.optim import Optimizer

if TYPE_CHECKING:
    from dream_trainer.trainer.abstract import AbstractTrainer

TrainerT = TypeVar("TrainerT", bound="AbstractTrainer")

HOOKS = (
    "pre_configure", "post_configure", "pre_setup", "post_setup", "pre_fit", "post_fit",
    "pre_epoch", "post_epoch", "pre_train_epoch", "post_train_epoch",
    "pre_train_step", "post_train_step",
    "pre_optimizer_step", "post_optimizer_step",
    "pre_optimizer_zero_grad", "post_optimizer_zero_grad",
    "pre_validation_epoch", "post_validation_epoch",
    "pre_validation_step", "post_validation_step",
    "on_interrupt",
)


class Callback(Generic[TrainerT]):
    """Base class of callbacks. Override the hooks you need; ``self.trainer`` is set before any
    hook runs. Parametrise with the mixin you rely on, e.g. ``Callback[SetupMixin]``: attaching the
    callback to a trainer without that mixin fails with a clear error."""

    trainer: TrainerT

    def dependencies(self) -> tuple[type, ...]:
        """The trainer classes this callback needs, read from its ``Callback[...]`` parameter."""
        for base in getattr(type(self), "__orig_bases__", ()):
            for arg in get_args(base):
                if isinstance(arg, type):
                    return (arg,)
        return ()

    # Lifecycle ----------------------------------------------------------------------------
    def pre_configure(self) -> None: ...
    def post_configure(self) -> None: ...
    def pre_setup(self) -> None: ...
    def post_setup(self) -> None: ...
    def pre_fit(self) -> None: ...
    def post_fit(self) -> None: ...
    def on_interrupt(self) -> None:
        """Called when ``fit()`` raises (including KeyboardInterrupt), before the error propagates."""

    # Training -----------------------------------------------------------------------------
    def pre_epoch(self) -> None: ...
    def post_epoch(self) -> None: ...
    def pre_train_epoch(self) -> None: ...
    def post_train_epoch(self, result: dict[str, Any]) -> None: ...
    def pre_train_step(self, batch: Any, batch_idx: int) -> None: ...
    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None: ...
    def pre_optimizer_step(self, model: nn.Module, optimizer: Optimizer) -> None: ...
    def post_optimizer_step(self, model: nn.Module, optimizer: Optimizer) -> None: ...
    def pre_optimizer_zero_grad(self, model: nn.Module, optimizer: Optimizer) -> None: ...
    def post_optimizer_zero_grad(self, model: nn.Module, optimizer: Optimizer) -> None: ...

    # Validation ---------------------------------------------------------------------------
    def pre_validation_epoch(self) -> None: ...
    def post_validation_epoch(self, result: dict[str, Any]) -> None: ...
    def pre_validation_step(self, batch: Any, batch_idx: int) -> None: ...
    def post_validation_step(self, result: dict[str, Any], batch_idx: int) -> None: ...

    # State --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints. Override together with :meth:`load_state_dict`."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        del state_dict


class RankZeroCallback(Callback[TrainerT]):
    """A callback whose hooks run on global rank 0 only (printing, writing files)."""


class CallbackCollection(dict[str, Callback]):
    """An ordered, named set of callbacks. Calling a hook name on the collection calls that hook
    on every callback, in insertion order: ``callbacks.post_train_step(result, batch_idx)``.

    Built from a list (names are the class names; ``None`` entries are skipped, so conditional
    callbacks can be written inline) or from a dict of name -> callback.
    """

    def __init__(self, callbacks: Iterable[Callback | None] | dict[str, Callback] = ()) -> None:
        items = callbacks.items() if isinstance(callbacks, dict) else (
            (type(c).__name__, c) for c in callbacks if c is not None)
        super().__init__()
        self._trainer: AbstractTrainer | None = None
        for name, callback in items:
            self.add(callback, name)

    def add(self, callback: Callback, name: str | None = None) -> None:
        """Add a callback under ``name`` (default: its class name); a duplicate name is an error."""
        name = name or type(callback).__name__
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks[{name!r}] is a {type(callback).__name__}, not a Callback; "
                            "subclass dream_trainer.callbacks.Callback")
        if name in self:
            raise ValueError(f"two callbacks are named {name!r}; pass a dict to name them apart")
        self[name] = callback
        if self._trainer is not None:
            self._attach(callback, name)

    def initialize(self, trainer: AbstractTrainer) -> None:
        """Attach every callback to ``trainer``, checking each callback's declared dependencies."""
        self._trainer = trainer
        for name, callback in self.items():
            self._attach(callback, name)

    def _attach(self, callback: Callback, name: str) -> None:
        trainer = self._trainer
        missing = [d.__name__ for d in callback.dependencies() if not isinstance(trainer, d)]
        if missing:
            raise TypeError(f"callback {name!r} needs a trainer with {missing}, but "
                            f"{type(trainer).__name__} lacks it; add the mixin to the trainer")
        callback.trainer = trainer

    def call(self, hook: str, *args: Any) -> None:
        """Run ``hook`` on every callback (rank-zero callbacks only on global rank 0)."""
        is_zero = self._trainer is None or self._trainer.world.is_global_zero
        for callback in self.values():
            if isinstance(callback, RankZeroCallback) and not is_zero:
                continue
            getattr(callback, hook)(*args)

    def __getattr__(self, name: str) -> Any:
        if name in HOOKS:
            return lambda *args: self.call(name, *args)
        raise AttributeError(f"'CallbackCollection' has no attribute {name!r}")

    def state_dict(self) -> dict[str, Any]:
        return {name: callback.state_dict() for name, callback in self.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, state in state_dict.items():
            if name in self:
                self[name].load_state_dict(state)

    def __repr__(self) -> str:
        return f"CallbackCollection({list(self)})"
