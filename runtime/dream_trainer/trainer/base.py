"""BaseTrainer: the training loop. Mixins supply models, optimizers and data (see SetupMixin)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
import torch.distributed.checkpoint.state_dict as dcp_sd
import torch.nn as nn
from torch.optim import Optimizer
from torch.utils._pytree import tree_map

from dream_trainer.callbacks.callback import CallbackCollection
from dream_trainer.configs import ConfigError, DeviceParameters, TrainingParameters
from dream_trainer.configs.errors import require_int
from dream_trainer.contract import CHECKPOINT_URI, PROGRESS_PORT
from dream_trainer.parallel import clip_grad_norm_, set_gradient_sync
from dream_trainer.parallel.compile import compiled_autograd
from dream_trainer.trainer.abstract import AbstractTrainer
from dream_trainer.utils.scalars import scalar_items
from dream_trainer.world import DistributedWorld

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class BaseTrainerConfig:
    """Configuration every trainer has. Subclass it (and config mixins) with ``@dataclass``."""

    project: str = "dream-trainer"
    group: str = "default"
    experiment: str = "run"
    seed: int = 42
    """Seeds torch on every rank when ``fit()`` starts, so replicated weights agree, and the
    data samplers' shuffling."""
    device_parameters: DeviceParameters = field(default_factory=DeviceParameters)
    training_parameters: TrainingParameters = field(default_factory=TrainingParameters)
    callbacks: CallbackCollection = field(default_factory=CallbackCollection)

    def __post_init__(self) -> None:
        require_int("BaseTrainerConfig.seed", self.seed, minimum=0)
        for name, kind in (("device_parameters", DeviceParameters),
                           ("training_parameters", TrainingParameters),
                           ("callbacks", CallbackCollection)):
            value = getattr(self, name)
            if name == "callbacks" and isinstance(value, (list, tuple)):
                self.callbacks = CallbackCollection(value)
            elif not isinstance(value, kind):
                raise ConfigError(f"{type(self).__name__}.{name}", value,
                                  f"expected a {kind.__name__}", f"pass a {kind.__name__}(...)")
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]


def validation_points(steps_in_epoch: int, val_frequency: float) -> set[int]:
    """Optimizer steps (1-based, within an epoch) after which validation runs, for a frequency
    given as a fraction of an epoch: 0.25 over 10 steps validates after steps 3, 5, 8 and 10."""
    runs = math.ceil(1.0 / val_frequency - 1e-9)
    return {min(steps_in_epoch, max(1, round(steps_in_epoch * k * val_frequency)))
            for k in range(1, runs + 1)}


class BaseTrainer(AbstractTrainer):
    """The training loop: epochs and/or max steps, gradient accumulation, clipping, validation
    cadence, sanity validation and the callback hooks, in a fixed order.

    Subclasses implement :meth:`training_step` and :meth:`validation_step`; a setup mixin
    (``SetupMixin``) provides models, optimizers, schedulers and dataloaders.
    """

    config: BaseTrainerConfig

    def __init__(self, config: BaseTrainerConfig) -> None:
        self.config = config
        self.world = DistributedWorld(config.device_parameters)
        config.training_parameters.check_divisible(self.world.dp_size)
        self.callbacks = config.callbacks
        self._add_checkpointing_from_environment()
        self._add_progress_server_from_environment()
        self.callbacks.initialize(self)
        self.global_step = 0
        self.current_epoch = 0
        self.epoch_batches = 0
        """Micro-batches consumed in ``current_epoch``: where a resumed epoch continues."""
        self.local_batches = 0
        self.training = False
        self.sanity_checking = False
        self._gradient_sync = True  # FSDP and DDP reduce gradients unless told otherwise
        self.last_validation_result: dict[str, float] = {}
        self.stop_reason: str | None = None
        """Set by :meth:`request_stop`: why training ends early (None: it does not)."""

    def _add_checkpointing_from_environment(self) -> None:
        """Under the operator (``DREAM_CHECKPOINT_URI`` set) a job checkpoints and resumes with
        no user code: add a CheckpointCallback if the config has none."""
        from dream_trainer.callbacks.checkpoint import CheckpointCallback
        from dream_trainer.trainer.mixins.setup.setup import SetupMixin

        if not os.environ.get(CHECKPOINT_URI) or not isinstance(self, SetupMixin):
            return
        if not any(isinstance(c, CheckpointCallback) for c in self.callbacks.values()):
            self.callbacks.add(CheckpointCallback())
            logger.info("checkpointing to $%s=%s", CHECKPOINT_URI, os.environ[CHECKPOINT_URI])

    def _add_progress_server_from_environment(self) -> None:
        """Under the operator (``DREAM_PROGRESS_PORT`` set) rank 0 serves its progress over
        HTTP: add a ProgressServerCallback if the config has none."""
        from dream_trainer.callbacks.progress_server import ProgressServerCallback

        if os.environ.get(PROGRESS_PORT) and not any(
                isinstance(c, ProgressServerCallback) for c in self.callbacks.values()):
            self.callbacks.add(ProgressServerCallback())

    # ------------------------------------------------------------------ user hooks
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Forward, ``self.backward(loss)``, and ``self.step(model, optimizer)`` when not
        accumulating. Return a dict of results (``loss`` at least) for callbacks."""
        raise TypeError(f"{type(self).__name__} must implement training_step(batch, batch_idx)")

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Evaluate one batch (gradients are off) and return a dict of scalar results."""
        raise TypeError(f"{type(self).__name__} must implement validation_step(batch, batch_idx)")

    def request_stop(self, reason: str) -> None:
        """Ask training to end cleanly at the next optimizer-step boundary (the current step
        finishes; ``post_train_epoch``, ``post_epoch`` and ``post_fit`` still run, so a final
        checkpoint is written). Typically called from a callback, e.g. early stopping.

        Every rank must make the same request at the same step: the check is local, so a request
        on one rank only would leave the others waiting in a collective. Decide from values that
        are identical everywhere, such as the all-reduced validation results.
        """
        if self.stop_reason is None:
            self.stop_reason = reason
            logger.info("stop requested at step %d: %s", self.global_step, reason)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.world.device

    @property
    def is_accumulating_gradients(self) -> bool:
        """True on micro-batches that only accumulate gradients; False on the one that steps."""
        accumulation = self.config.training_parameters.gradient_accumulation_steps
        return (self.local_batches + 1) % accumulation != 0

    # ------------------------------------------------------------------ step API
    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` scaled by 1/accumulation, so accumulated gradients are a mean
        (through compiled autograd when ``enable_compiled_autograd``). Runs inside
        ``loss_parallel()``, which a loss computed on sharded logits needs for its backward too."""
        accumulation = self.config.training_parameters.gradient_accumulation_steps
        with compiled_autograd(self.world.device_parameters.enable_compiled_autograd), \
                self.world.loss_parallel():
            (loss / accumulation).backward()

    def step(self, model: nn.Module, optimizer: Optimizer) -> torch.Tensor:
        """Clip (if configured), step ``optimizer`` and the schedulers bound to it, zero grads.

        Returns the global gradient norm before clipping (over all shards and stages).
        """
        pp_mesh = self.world.pp_mesh if self.world.dims.pp > 1 else None
        grad_norm = clip_grad_norm_(model.parameters(),
                                    self.config.training_parameters.gradient_clip_val, pp_mesh)
        self.callbacks.pre_optimizer_step(model, optimizer)
        optimizer.step()
        self.callbacks.post_optimizer_step(model, optimizer)
        self._step_schedulers(optimizer, interval="step")
        self.callbacks.pre_optimizer_zero_grad(model, optimizer)
        optimizer.zero_grad(set_to_none=True)
        self.callbacks.post_optimizer_zero_grad(model, optimizer)
        return grad_norm

    def _step_schedulers(self, optimizer: Optimizer | None, interval: str) -> None:
        if getattr(self.config, "scheduler_interval", "step") != interval:
            return
        for scheduler in self.named_schedulers().values():
            if optimizer is None or scheduler.optimizer is optimizer:
                scheduler.step()

    # ------------------------------------------------------------------ modes
    def train(self) -> None:
        self.training = True
        for model in self.named_models().values():
            model.train()

    def eval(self) -> None:
        self.training = False
        for model in self.named_models().values():
            model.eval()

    # ------------------------------------------------------------------ fit
    def fit(self) -> None:
        """Configure, set up, then train until ``n_epochs`` or ``max_steps`` is reached."""
        # Seeded here, not in __init__, so nothing that runs between the two shifts the init.
        torch.manual_seed(self.config.seed)
        try:
            self.callbacks.pre_configure()
            self.configure()
            self.callbacks.post_configure()
            self.callbacks.pre_setup()
            self.setup()
            self.callbacks.post_setup()
            self.callbacks.pre_fit()
            self._fit_loop()
            self.callbacks.post_fit()
        except BaseException:
            self.callbacks.on_interrupt()
            raise

    def _finished(self) -> bool:
        if self.stop_reason is not None:
            return True
        params = self.config.training_parameters
        if params.max_steps is not None and self.global_step >= params.max_steps:
            return True
        return params.n_epochs is not None and self.current_epoch >= params.n_epochs

    def _fit_loop(self) -> None:
        sanity_steps = self.config.training_parameters.num_sanity_val_steps
        if sanity_steps and self._val_loader() is not None:
            self.sanity_checking = True
            self._run_validation(limit=sanity_steps)
            self.sanity_checking = False
        while not self._finished():
            self.callbacks.pre_epoch()
            completed = self._train_epoch()
            self.callbacks.post_epoch()
            if completed:  # max_steps can end training mid-epoch; a resume continues that epoch
                self.current_epoch += 1
                self.epoch_batches = 0
                self._step_schedulers(None, interval="epoch")

    def _train_loader(self) -> Iterable[Any]:
        loader = getattr(self, "train_dataloader", None)
        if loader is None:
            raise TypeError(f"{type(self).__name__} has no train_dataloader; "
                            "return one from configure_dataloaders()")
        return loader

    def _val_loader(self) -> Iterable[Any] | None:
        return getattr(self, "val_dataloader", None)

    def _steps_in_epoch(self, loader: Iterable[Any]) -> int | None:
        """Optimizer steps in this epoch: the configured limit or what the loader holds."""
        params = self.config.training_parameters
        try:
            available = len(loader) // params.gradient_accumulation_steps  # type: ignore[arg-type]
        except TypeError:  # an iterable without a length
            available = None
        limits = [n for n in (available, params.train_steps_per_epoch) if n is not None]
        return min(limits) if limits else None

    def _position_loader(self, loader: Iterable[Any]) -> Iterator[Any]:
        """An iterator over this epoch's remaining batches: the sampler is told the epoch (for
        shuffling) and, when resuming mid-epoch, where to start, in global samples."""
        start = self.epoch_batches
        sampler = next(_samplers(loader), None)
        if sampler is not None:
            sampler.set_epoch(self.current_epoch)
        if start and hasattr(sampler, "set_start"):
            sampler.set_start(start * self.config.training_parameters.train_batch_size)
            return iter(loader)
        if start:
            logger.warning("resuming epoch %d at batch %d: the sampler cannot seek, so %d "
                           "batches are read and skipped", self.current_epoch, start, start)
            return islice(loader, start, None)
        return iter(loader)

    def _train_epoch(self) -> bool:
        """Train until the epoch's batches run out (True) or ``max_steps`` is reached (False)."""
        params = self.config.training_parameters
        accumulation = params.gradient_accumulation_steps
        loader = self._train_loader()
        steps = self._steps_in_epoch(loader)
        if steps == 0:
            raise ValueError(f"the train dataloader yields fewer than gradient_accumulation_steps="
                             f"{accumulation} batches per rank; use more data or fewer steps")
        val_at = set()
        if self._val_loader() is not None:
            if params.val_every_n_steps is None and steps is not None:
                val_at = validation_points(steps, params.val_frequency)
        start = self.epoch_batches
        limit = None if steps is None else steps * accumulation - start
        batches = self._position_loader(loader)

        self.train()
        self.callbacks.pre_train_epoch()
        totals: dict[str, torch.Tensor] = {}
        step_in_epoch = start // accumulation
        completed = True
        for batch_idx, batch in enumerate(islice(batches, limit), start=start):
            if params.max_steps is not None and self.global_step >= params.max_steps:
                completed = False
                break
            if self.stop_reason is not None and not self.local_batches % accumulation:
                completed = False  # request_stop(): end at this step boundary
                break
            batch = self._to_device(batch)
            stepping = not self.is_accumulating_gradients
            if stepping != self._gradient_sync:  # walking every module is not free: only on change
                for model in self.named_models().values():
                    set_gradient_sync(model, stepping)
                self._gradient_sync = stepping
            self.callbacks.pre_train_step(batch, batch_idx)
            with self.world.train_context():
                result = self.training_step(batch, batch_idx)
            self.callbacks.post_train_step(result, batch_idx)
            self.local_batches += 1
            self.epoch_batches += 1
            if stepping:
                self.global_step += 1
                step_in_epoch += 1
            _accumulate(totals, result)
            if stepping and self._validation_due(step_in_epoch, val_at):
                self._run_validation(limit=params.val_steps_per_epoch)
                self.train()
        if self.local_batches % accumulation:
            # An epoch that ended mid-accumulation (a loader shorter than its length claimed):
            # drop the partial gradients rather than mixing them into the next epoch's step.
            logger.warning("epoch %d ended mid-accumulation; dropping partial gradients",
                           self.current_epoch)
            for optimizer in self.named_optimizers().values():
                optimizer.zero_grad(set_to_none=True)
            self.local_batches += accumulation - self.local_batches % accumulation
        self.callbacks.post_train_epoch(self._mean_results(totals))
        if (completed and steps is None and self._val_loader() is not None
                and params.val_every_n_steps is None):
            self._run_validation(limit=params.val_steps_per_epoch)
        return completed

    def _validation_due(self, step_in_epoch: int, val_at: set[int]) -> bool:
        every = self.config.training_parameters.val_every_n_steps
        if self._val_loader() is None:
            return False
        if every is not None:
            return self.global_step % every == 0
        return step_in_epoch in val_at

    @torch.no_grad()
    def _run_validation(self, limit: int | None) -> dict[str, float]:
        loader = self._val_loader()
        assert loader is not None
        self.eval()
        self.callbacks.pre_validation_epoch()
        totals: dict[str, torch.Tensor] = {}
        for batch_idx, batch in enumerate(islice(loader, limit)):
            batch = self._to_device(batch)
            self.callbacks.pre_validation_step(batch, batch_idx)
            with self.world.train_context():
                result = self.validation_step(batch, batch_idx)
            self.callbacks.post_validation_step(result, batch_idx)
            _accumulate(totals, result)
        result = self._mean_results(totals)
        if not self.sanity_checking:
            self.last_validation_result = result
        self.callbacks.post_validation_epoch(result)
        return result

    def _mean_results(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """Per-key mean over batches, then over data-parallel ranks. One collective for all keys."""
        if not totals:
            return {}
        keys = sorted(k for k in totals if k != "_count")
        stacked = torch.stack([totals[k].float().to(self.device) for k in keys])
        stacked = self.world.all_reduce_mean(stacked / totals["_count"].to(self.device))
        return dict(zip(keys, stacked.tolist(), strict=True))

    def _to_device(self, batch: Any) -> Any:
        device = self.device
        if device.type == "cpu":
            return batch  # loaders produce CPU tensors already
        return tree_map(lambda x: x.to(device, non_blocking=True)
                        if isinstance(x, torch.Tensor) else x, batch)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: counters, callbacks, models, optimizers, schedulers and
        the dataloaders' own state when they have one. Model and optimizer entries are keyed by
        parameter name and hold DTensors, so DCP can save and reshard them."""
        models = self.named_models()
        optimizers = self.named_optimizers()
        return {
            "trainer": {"global_step": self.global_step, "current_epoch": self.current_epoch,
                        "epoch_batches": self.epoch_batches,
                        "local_batches": self.local_batches,
                        "callbacks": self.callbacks.state_dict()},
            "models": {name: dcp_sd.get_model_state_dict(model) for name, model in models.items()},
            "optimizers": {name: dcp_sd.get_optimizer_state_dict(_model_of(opt, models), opt)
                           for name, opt in optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.named_schedulers().items()},
            "dataloaders": {name: loader.state_dict() for name in ("train", "val")
                            if hasattr(loader := getattr(self, f"{name}_dataloader", None),
                                       "state_dict")},
        }

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Restore what :meth:`state_dict` returned (models before optimizers, as DCP requires)."""
        trainer = state_dict["trainer"]
        self.global_step = trainer["global_step"]
        self.current_epoch = trainer["current_epoch"]
        self.epoch_batches = trainer.get("epoch_batches", 0)
        self.local_batches = trainer.get("local_batches", 0)
        self.callbacks.load_state_dict(trainer.get("callbacks", {}))
        models = self.named_models()
        for name, model_state in state_dict.get("models", {}).items():
            dcp_sd.set_model_state_dict(models[name], model_state,
                                        options=dcp_sd.StateDictOptions(strict=strict))
        optimizers = self.named_optimizers()
        for name, opt_state in state_dict.get("optimizers", {}).items():
            optimizer = optimizers[name]
            dcp_sd.set_optimizer_state_dict(_model_of(optimizer, models), optimizer, opt_state)
        schedulers = self.named_schedulers()
        for name, sched_state in state_dict.get("schedulers", {}).items():
            schedulers[name].load_state_dict(sched_state)
        for name, loader_state in state_dict.get("dataloaders", {}).items():
            loader = getattr(self, f"{name}_dataloader", None)
            if hasattr(loader, "load_state_dict"):
                loader.load_state_dict(loader_state)


def _model_of(optimizer: Optimizer, models: dict[str, nn.Module]) -> nn.Module:
    """The model whose parameters ``optimizer`` updates (needed to key its state by name)."""
    first = optimizer.param_groups[0]["params"][0]
    for model in models.values():
        if any(p is first for p in model.parameters()):
            return model
    raise ValueError("an optimizer updates parameters of no tracked model; assign the model "
                     "to an attribute in configure_models() before building its optimizer")


def _samplers(loader: Iterable[Any]) -> Iterator[Any]:
    for sampler in (getattr(loader, "sampler", None),
                    getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if hasattr(sampler, "set_epoch"):
            yield sampler
            return


def _accumulate(totals: dict[str, torch.Tensor], result: Any) -> None:
    """Add the scalar entries of a step result to running sums (no host sync)."""
    for key, value in scalar_items(result):
        totals[key] = totals[key] + value if key in totals else value
    totals["_count"] = totals.get("_count", torch.tensor(0.0)) + 1
