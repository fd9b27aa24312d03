"""EMACallback: an exponential moving average of model weights, sharded like the weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from dream_trainer.callbacks.callback import Callback
from dream_trainer.configs.errors import ConfigError, require_bool, require_int, require_number

_NAME = "EMACallback"
_WRAPPERS = ("_checkpoint_wrapped_module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    """A parameter name without the prefixes that activation checkpointing, ``torch.compile`` and
    wrappers insert, so EMA state keys do not depend on how the model was wrapped."""
    for wrapper in _WRAPPERS:
        name = name.replace(wrapper, "")
    return name


def reshard(module: nn.Module) -> None:
    """Register FSDP2's sharded parameters again. After a forward without backward (validation)
    the root FSDP module keeps its parameters unsharded, and ``parameters()`` returns the
    unsharded tensors; code that reads or writes the sharded weights calls this first (it frees
    the unsharded copies, no communication)."""
    from torch.distributed.fsdp import FSDPModule

    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (sharing its storage), or the tensor itself."""
    return t._local_tensor if isinstance(t, DTensor) else t


class EMACallback(Callback):
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` for every trainable parameter.

    * The average starts as a copy of the weights after ``init_weights``. Up to and including
      optimizer step ``start_step`` it simply follows the weights (a copy after each step); after
      that it is updated every ``update_every_n_steps`` optimizer steps (counted from
      ``start_step``), once per step whatever the number of optimizers.
    * Parameters sharded by FSDP2 / TP are DTensors: the average is a DTensor with the same
      placements, and updates touch only this rank's local shard (no communication, memory =
      one extra copy of the local shard). It is kept in the parameters' dtype.
    * ``use_for_validation=True`` swaps the averaged weights into the model for each validation
      run (sanity validation included) and the training weights back afterwards (an exact copy,
      so training continues bit-for-bit). :meth:`average_weights` does the same for your code,
      e.g. to export or evaluate the average.
    * Checkpoints hold the average (by parameter name, as DTensors, so DCP reshards it) and the
      update count; a resumed run continues the same average.

    ``models``: names of the trainer's models to average (default: every model).

    Example::

        EMACallback(decay=0.999, update_every_n_steps=1, start_step=100, use_for_validation=True)
    """

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1, start_step: int = 0,
                 use_for_validation: bool = False, models: list[str] | None = None) -> None:
        require_number(f"{_NAME}.decay", decay, minimum=0.0)
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"{_NAME}.decay", decay, "must be in [0, 1]",
                              "pass a value close to 1 such as 0.999")
        require_int(f"{_NAME}.update_every_n_steps", update_every_n_steps, minimum=1)
        require_int(f"{_NAME}.start_step", start_step, minimum=0)
        require_bool(f"{_NAME}.use_for_validation", use_for_validation)
        self.decay = float(decay)
        self.update_every_n_steps = update_every_n_steps
        self.start_step = start_step
        self.use_for_validation = use_for_validation
        self.models = models
        self.num_updates = 0
        """Averaging updates applied so far (copies before ``start_step`` not counted)."""
        self.shadow: dict[str, dict[str, torch.Tensor]] = {}
        """model name -> canonical parameter name -> averaged tensor (DTensor when sharded)."""
        self._backup: list[torch.Tensor] | None = None

    # ----------------------------------------------------------------- parameters
    def _models(self) -> dict[str, nn.Module]:
        models = self.trainer.named_models()
        if self.models is None:
            return models
        missing = [m for m in self.models if m not in models]
        if missing:
            raise ConfigError(f"{_NAME}.models", self.models,
                              f"names models the trainer lacks ({missing})",
                              f"pass names among {sorted(models)}, or None for all")
        return {name: models[name] for name in self.models}

    def _pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, average) for every averaged parameter."""
        for model_name, model in self._models().items():
            reshard(model)
            shadow = self.shadow[model_name]
            for name, param in model.named_parameters():
                key = canonical_name(name)
                if key in shadow:
                    yield param, shadow[key]

    @torch.no_grad()
    def _initialize(self) -> None:
        for model in self._models().values():
            reshard(model)
        self.shadow = {
            model_name: {canonical_name(name): param.detach().clone()
                         for name, param in model.named_parameters() if param.requires_grad}
            for model_name, model in self._models().items()}

    # ----------------------------------------------------------------- hooks
    def post_setup(self) -> None:
        self._initialize()

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        trainer = self.trainer
        if trainer.is_accumulating_gradients:
            return
        step = trainer.global_step + 1  # the optimizer step that just ran (counters advance after)
        if step <= self.start_step:
            self._update(0.0)  # follow the weights until averaging starts
        elif (step - self.start_step) % self.update_every_n_steps == 0:
            self._update(self.decay)
            self.num_updates += 1

    @torch.no_grad()
    def _update(self, decay: float) -> None:
        pairs = [(_local(e), _local(p)) for p, e in self._pairs()]
        if not pairs:
            return
        averages, weights = [e for e, _ in pairs], [p.detach() for _, p in pairs]
        if decay == 0.0:
            torch._foreach_copy_(averages, weights)
        else:
            torch._foreach_lerp_(averages, weights, 1.0 - decay)

    def pre_validation_epoch(self) -> None:
        if self.use_for_validation:
            self.swap_in()

    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        if self.use_for_validation:
            self.swap_out()

    def on_interrupt(self) -> None:
        if self._backup is not None:
            self.swap_out()  # never leave the averaged weights in a model that keeps training

    # ----------------------------------------------------------------- swapping
    @torch.no_grad()
    def swap_in(self) -> None:
        """Copy the averaged weights into the model, keeping the training weights aside."""
        if self._backup is not None:
            raise RuntimeError("EMACallback.swap_in(): the averaged weights are already in the "
                               "model; call swap_out() first")
        pairs = [(_local(p), _local(e)) for p, e in self._pairs()]
        self._backup = [p.clone() for p, _ in pairs]
        if pairs:
            torch._foreach_copy_([p for p, _ in pairs], [e for _, e in pairs])

    @torch.no_grad()
    def swap_out(self) -> None:
        """Put the training weights back (exactly as they were before :meth:`swap_in`)."""
        if self._backup is None:
            raise RuntimeError("EMACallback.swap_out() without swap_in()")
        params = [_local(p) for p, _ in self._pairs()]
        if params:
            torch._foreach_copy_(params, self._backup)
        self._backup = None

    @contextlib.contextmanager
    def average_weights(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; the training weights are
        restored on exit (also on error)::

            with ema.average_weights():
                evaluate(trainer.model)
        """
        self.swap_in()
        try:
            yield
        finally:
            self.swap_out()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": self.num_updates,
                "shadow": {m: dict(params) for m, params in self.shadow.items()}}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict["num_updates"])
        for model_name, params in state_dict["shadow"].items():
            if model_name not in self.shadow:
                continue
            for name, value in params.items():
                target = self.shadow[model_name].get(name)
                if target is None:
                    continue
                if target is value:
                    continue  # DCP loaded in place
                if isinstance(target, DTensor) and not isinstance(value, DTensor):
                    target.copy_(torch.distributed.tensor.distribute_tensor(
                        value.to(target.device), target.device_mesh, target.placements))
                else:
                    target.copy_(value)
