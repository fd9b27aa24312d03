"""The learning-rate range test (Leslie Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017): train a few steps with an exponentially growing learning rate, watch the loss,
and suggest a learning rate from where it falls fastest. The trainer is restored afterwards."""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer
from torch.utils._pytree import tree_map

from dream_trainer.callbacks.callback import Callback, CallbackCollection
from dream_trainer.callbacks.ema import reshard
from dream_trainer.configs.errors import ConfigError, require_int, require_number
from dream_trainer.parallel import set_gradient_sync
from dream_trainer.utils.rank_zero import rank_zero_print

logger = logging.getLogger(__name__)

_NAME = "find_learning_rate"


@dataclass
class LRFinderResult:
    """What the range test saw. ``lrs[i]`` is the (reference group's) learning rate of step i,
    ``losses[i]`` its loss (mean over micro-batches and data-parallel ranks) and ``smoothed[i]``
    the bias-corrected exponential moving average of the losses up to i."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    """The suggested learning rate (see :func:`suggest_lr`), or None if too few steps ran."""
    suggestion_index: int | None = None
    diverged: bool = False
    """Whether the test ended early because the loss diverged."""
    plot_path: str | None = None

    def plot(self, path: str) -> str:
        """Write the smoothed loss against the learning rate (log scale) as a PNG to ``path`` (a
        local path or any fsspec URL), marking the suggestion. Needs matplotlib."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as err:  # pragma: no cover - exercised only without matplotlib
            raise ImportError("the LR finder's plot needs matplotlib: pip install "
                              "'matplotlib>=3.8' (it is in the dev extra), or pass "
                              "plot_path=None") from err
        import fsspec

        figure = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(figure)  # the Agg canvas: no display, no pyplot global state
        axes = figure.add_subplot()
        axes.plot(self.lrs, self.losses, color="0.75", linewidth=1, label="loss")
        axes.plot(self.lrs, self.smoothed, color="C0", label="smoothed loss")
        if self.suggestion is not None and self.suggestion_index is not None:
            axes.plot([self.suggestion], [self.smoothed[self.suggestion_index]], "o", color="C3",
                      label=f"suggestion {self.suggestion:.2e}")
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("loss")
        axes.set_title("learning-rate range test" + (" (diverged)" if self.diverged else ""))
        finite = [v for v in self.smoothed if math.isfinite(v)]
        if finite:  # keep the divergence from squashing the interesting part of the curve
            low, high = min(finite), self.smoothed[0]
            axes.set_ylim(low - 0.1 * abs(high - low) - 1e-12, high + 0.5 * abs(high - low) + 1e-12)
        axes.legend()
        figure.tight_layout()
        with fsspec.open(path, "wb") as f:
            figure.savefig(f, format="png")
        self.plot_path = path
        return path


def suggest_lr(lrs: list[float], smoothed: list[float], skip_start: int | None = None,
               skip_end: int = 1) -> int | None:
    """The index of the suggested learning rate: where the smoothed loss falls fastest, i.e. the
    most negative slope d(smoothed loss) / d(log10 lr) (``numpy.gradient``, central differences),
    ignoring the first ``skip_start`` points (default: a tenth of them, while the moving average
    warms up) and the last ``skip_end`` (where the loss blows up). None if fewer than 3 points
    are left or the loss never falls."""
    n = len(lrs)
    start = n // 10 if skip_start is None else skip_start
    stop = n - skip_end
    if stop - start < 3:
        return None
    losses = np.asarray(smoothed, dtype=np.float64)
    slopes = np.gradient(losses, np.log10(np.asarray(lrs, dtype=np.float64)))
    window = slopes[start:stop]
    best = int(np.argmin(window))
    if not window[best] < -1e-9 * max(1.0, float(np.abs(losses).max())):  # rounding is no fall
        return None
    return start + best


def find_learning_rate(trainer: Any, min_lr: float = 1e-7, max_lr: float = 10.0,
                       num_steps: int = 100, *, smoothing: float = 0.98,
                       divergence_threshold: float = 4.0, skip_start: int | None = None,
                       skip_end: int = 1, plot_path: str | None = None,
                       loss_key: str = "loss") -> LRFinderResult:
    """Run the learning-rate range test on ``trainer`` and restore it exactly afterwards.

    For ``num_steps`` optimizer steps (each with the configured gradient accumulation) the
    learning rate grows exponentially from ``min_lr`` to ``max_lr``:
    ``lr_i = min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))``. The trainer's own
    ``training_step`` runs on its train dataloader (cycled if it is short), so the test measures
    the real model, loss, optimizer, clipping and parallelism. With several parameter groups (or
    optimizers) every group keeps its ratio to the first group's learning rate; the reported
    learning rates are the first group's.

    The loss of each step (``result[loss_key]``, averaged over micro-batches and data-parallel
    ranks, so every rank sees the same curve and stops at the same step) is smoothed with a
    bias-corrected exponential moving average (``smoothing`` = its beta). The test stops early
    when a loss is not finite or the smoothed loss exceeds the best one by a factor
    ``divergence_threshold``. The suggestion follows :func:`suggest_lr`: the learning rate where
    the smoothed loss falls fastest per decade. Typical use: train with it, or somewhat below.

    Afterwards model parameters and buffers, optimizer and scheduler state, the trainer's
    counters and the RNG states are exactly what they were; callbacks do not run during the test
    (an EMA is not updated, nothing is checkpointed). If ``plot_path`` is given, rank 0 writes a
    PNG of the curve there (needs matplotlib).

    ``trainer`` must be set up (``trainer.configure(); trainer.setup()``, or inside ``fit()`` via
    :class:`LRFinderCallback`); a trainer that is not gets set up here (a later ``fit()`` builds
    everything anew, so pass the suggestion to a fresh config, or use the callback).
    """
    require_number(f"{_NAME}.min_lr", min_lr, minimum=0.0)
    require_number(f"{_NAME}.max_lr", max_lr, minimum=0.0)
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"{_NAME}.min_lr", min_lr, f"must be > 0 and below max_lr={max_lr}",
                          "pass e.g. min_lr=1e-7, max_lr=10")
    require_int(f"{_NAME}.num_steps", num_steps, minimum=2)
    require_number(f"{_NAME}.smoothing", smoothing, minimum=0.0)
    if not smoothing < 1:
        raise ConfigError(f"{_NAME}.smoothing", smoothing, "must be in [0, 1)",
                          "pass e.g. 0.98 (0: no smoothing)")
    require_number(f"{_NAME}.divergence_threshold", divergence_threshold, minimum=1.0)

    if not trainer.named_optimizers():
        torch.manual_seed(trainer.config.seed)
        trainer.configure()
        trainer.setup()
    optimizers = list(trainer.named_optimizers().values())
    scales = _group_scales(optimizers)
    snapshot = _Snapshot(trainer)
    callbacks, trainer.callbacks = trainer.callbacks, CallbackCollection()
    result = LRFinderResult()
    try:
        _sweep(trainer, optimizers, scales, result, min_lr, max_lr, num_steps, smoothing,
               divergence_threshold, loss_key)
    finally:
        trainer.callbacks = callbacks
        snapshot.restore()
    index = suggest_lr(result.lrs, result.smoothed, skip_start, skip_end)
    if index is not None:
        result.suggestion, result.suggestion_index = result.lrs[index], index
    summary = (f"LR finder: {len(result.lrs)} steps from {min_lr:.1e}"
               + (", diverged" if result.diverged else "") + "; suggested learning rate "
               + (f"{result.suggestion:.3e}" if result.suggestion is not None
                  else "none (too few steps, or the loss never fell)"))
    rank_zero_print(summary)
    if plot_path is not None:
        if trainer.world.is_global_zero:
            result.plot(plot_path)
        else:
            result.plot_path = plot_path
    return result


def _group_scales(optimizers: list[Optimizer]) -> list[list[float]]:
    """Each group's learning rate relative to the first group's (its initial LR when a
    scheduler already changed the current one)."""
    def base(group: dict[str, Any]) -> float:
        return float(group.get("initial_lr", group["lr"]))

    reference = base(optimizers[0].param_groups[0])
    if reference == 0:
        return [[1.0 for _ in opt.param_groups] for opt in optimizers]
    return [[base(g) / reference for g in opt.param_groups] for opt in optimizers]


def _set_lr(optimizers: list[Optimizer], scales: list[list[float]], lr: float) -> None:
    for optimizer, group_scales in zip(optimizers, scales, strict=True):
        for group, scale in zip(optimizer.param_groups, group_scales, strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr * scale)
            else:
                group["lr"] = lr * scale


def _batches(loader: Any) -> Iterator[Any]:
    """The train loader's batches, started again whenever it runs out."""
    for epoch in itertools.count():
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("find_learning_rate: the train dataloader yields no batches")
        logger.debug("LR finder: train dataloader exhausted after pass %d; cycling", epoch)


def _sweep(trainer: Any, optimizers: list[Optimizer], scales: list[list[float]],
           result: LRFinderResult, min_lr: float, max_lr: float, num_steps: int,
           smoothing: float, divergence_threshold: float, loss_key: str) -> None:
    accumulation = trainer.config.training_parameters.gradient_accumulation_steps
    batches = _batches(trainer._train_loader())
    trainer.train()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    trainer.local_batches -= trainer.local_batches % accumulation  # start at a step boundary
    average, best = 0.0, math.inf
    for i in range(num_steps):
        lr = min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))
        _set_lr(optimizers, scales, lr)
        losses = []
        for _ in range(accumulation):
            batch = trainer._to_device(next(batches))
            stepping = not trainer.is_accumulating_gradients
            if stepping != trainer._gradient_sync:
                for model in trainer.named_models().values():
                    set_gradient_sync(model, stepping)
                trainer._gradient_sync = stepping
            with trainer.world.train_context():
                out = trainer.training_step(batch, trainer.local_batches)
            if not isinstance(out, dict) or loss_key not in out:
                raise ConfigError(f"{_NAME}.loss_key", loss_key,
                                  "is not in the dict training_step returned ("
                                  + (f"keys {sorted(out)}" if isinstance(out, dict)
                                     else type(out).__name__) + ")",
                                  "return the loss under that key, or pass loss_key=...")
            value = out[loss_key]
            if isinstance(value, DTensor):
                value = value.full_tensor()
            losses.append(torch.as_tensor(value, dtype=torch.float32).detach().reshape(()))
            trainer.local_batches += 1
        trainer.global_step += 1
        mean = torch.stack([x.to(trainer.device) for x in losses]).mean()
        loss = float(trainer.world.all_reduce_mean(mean))
        if not math.isfinite(loss):
            result.diverged = True
            break
        average = smoothing * average + (1 - smoothing) * loss
        smoothed = average / (1 - smoothing ** (i + 1))
        result.lrs.append(lr)
        result.losses.append(loss)
        result.smoothed.append(smoothed)
        best = min(best, smoothed)
        if i > 0 and smoothed > best + (divergence_threshold - 1) * abs(best):
            result.diverged = True
            break


class _Snapshot:
    """A copy of everything the range test changes, put back by :meth:`restore`."""

    def __init__(self, trainer: Any) -> None:
        from dream_trainer.callbacks.checkpoint import rng_state

        self.trainer = trainer
        self.counters = {name: getattr(trainer, name) for name in (
            "global_step", "current_epoch", "epoch_batches", "local_batches")}
        self.training = trainer.training
        for model in trainer.named_models().values():
            reshard(model)  # the sharded weights are what the optimizer updates
        self.tensors = {name: [_local(t).detach().clone() for t in _tensors(model)]
                        for name, model in trainer.named_models().items()}
        self.optimizers = {name: _clone(opt.state_dict())
                           for name, opt in trainer.named_optimizers().items()}
        self.schedulers = {name: copy.deepcopy(s.state_dict())
                           for name, s in trainer.named_schedulers().items()}
        self.rng = rng_state()

    @torch.no_grad()
    def restore(self) -> None:
        from dream_trainer.callbacks.checkpoint import set_rng_state

        trainer = self.trainer
        for name, model in trainer.named_models().items():
            reshard(model)
            for tensor, saved in zip(_tensors(model), self.tensors[name], strict=True):
                _local(tensor).copy_(saved)
            for param in model.parameters():
                param.grad = None
        for name, optimizer in trainer.named_optimizers().items():
            optimizer.load_state_dict(self.optimizers[name])
        for name, scheduler in trainer.named_schedulers().items():
            scheduler.load_state_dict(self.schedulers[name])
        for name, value in self.counters.items():
            setattr(trainer, name, value)
        if self.training:
            trainer.train()
        else:
            trainer.eval()
        set_rng_state(self.rng)


def _tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if isinstance(t, DTensor) else t


def _clone(state: Any) -> Any:
    return tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor)
                    else copy.deepcopy(x), state)


def set_learning_rate(trainer: Any, lr: float) -> None:
    """Make ``lr`` the first parameter group's base learning rate and keep every other group (of
    every optimizer) at its ratio to it; rebase the schedulers too. A group's base is its
    ``initial_lr`` (set by a scheduler) or else its ``lr``; the current ``lr`` keeps its ratio to
    the base, so a warmup or decay already under way keeps its shape."""
    optimizers = list(trainer.named_optimizers().values())
    first = optimizers[0].param_groups[0]
    reference = float(first.get("initial_lr", first["lr"]))
    if reference == 0:
        raise ConfigError("set_learning_rate.lr", lr, "the first parameter group's learning "
                          "rate is 0, so there is no ratio to scale the others by",
                          "configure the optimizer with a non-zero learning rate")
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            current = float(group["lr"])
            base = float(group.get("initial_lr", current))
            new_base = lr * (base / reference)
            new = new_base if current == base else new_base * (current / base if base else 1.0)
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(new)
            else:
                group["lr"] = new
            if "initial_lr" in group:
                group["initial_lr"] = new_base
    for scheduler in trainer.named_schedulers().values():
        scheduler.base_lrs = [lr * (base / reference) for base in scheduler.base_lrs]
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [float(g["lr"]) for g in scheduler.optimizer.param_groups]


class LRFinderCallback(Callback):
    """Runs :func:`find_learning_rate` when a fresh run starts (before its first training step;
    a resumed run is left alone), writes the plot, and with ``apply=True`` trains with the
    suggestion (see :func:`set_learning_rate`). The result is kept in :attr:`result` and the
    suggestion in checkpoints.

    Example::

        LRFinderCallback(min_lr=1e-6, max_lr=1.0, num_steps=100, plot_path="lr_finder.png")
    """

    def __init__(self, min_lr: float = 1e-7, max_lr: float = 10.0, num_steps: int = 100, *,
                 apply: bool = True, plot_path: str | None = "lr_finder.png",
                 **options: Any) -> None:
        self.kwargs = {"min_lr": min_lr, "max_lr": max_lr, "num_steps": num_steps,
                       "plot_path": plot_path, **options}
        self.apply = apply
        self.result: LRFinderResult | None = None
        self.suggested_lr = -1.0
        """The suggestion of the run's range test (-1: none), kept in checkpoints."""

    def pre_epoch(self) -> None:
        trainer = self.trainer
        if (self.result is not None or self.suggested_lr >= 0 or trainer.global_step
                or trainer.epoch_batches):
            return  # done already, or a resumed run: its optimizer state has the learning rate
        self.result = find_learning_rate(trainer, **self.kwargs)
        if self.result.suggestion is None:
            logger.warning("LR finder found no suggestion; keeping the configured learning rate")
            return
        self.suggested_lr = self.result.suggestion
        if self.apply:
            set_learning_rate(trainer, self.result.suggestion)
            rank_zero_print(f"LR finder: training with learning rate {self.suggested_lr:.3e}")

    def state_dict(self) -> dict[str, Any]:
        return {"suggested_lr": self.suggested_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.suggested_lr = float(state_dict["suggested_lr"])
