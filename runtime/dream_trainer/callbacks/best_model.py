"""BestModelCallback: keep the model weights of the best validation so far."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from typing import Any, Literal

import fsspec
import torch
import torch.distributed as dist
import torch.distributed.checkpoint.state_dict as dcp_sd

from dream_trainer.callbacks.callback import Callback
from dream_trainer.callbacks.ema import reshard
from dream_trainer.checkpoint.export import write_safetensors
from dream_trainer.configs.errors import ConfigError, require_choice, require_number
from dream_trainer.trainer.mixins.setup.models import ModelSetupMixin

logger = logging.getLogger(__name__)

_NAME = "BestModelCallback"
BEST_RECORD = "best.json"


class BestModelCallback(Callback[ModelSetupMixin]):
    """After each validation whose ``monitor`` beats the best so far (by more than
    ``min_delta``; ``mode`` "min" or "max"), writes each model in ``models`` unsharded as
    ``<dirpath>/<model>.safetensors`` (gathered from every FSDP/TP shard and pipeline stage; rank
    0 writes) and then ``<dirpath>/best.json`` with the metric, step and epoch. ``dirpath`` is a
    local path or any fsspec URL. The files always hold the weights that scored best, for
    inference or export; the best value is kept in checkpoints, so a resumed run only replaces
    them with a better one.

    The weights saved are the ones that were validated: with ``EMACallback(use_for_validation=
    True)`` the averaged weights, whatever the order of the two callbacks.

    For a *resumable* best checkpoint (optimizer and data position too) use checkpoint retention
    instead: ``CheckpointParameters(monitor="val_loss", mode="min", keep_top_k=1)`` keeps the best
    committed checkpoint (and the newest), :func:`best_checkpoint` finds it, and
    ``resume_mode="best"`` resumes from it.

    Example::

        BestModelCallback("s3://bucket/run/best", monitor="val_loss", mode="min")
    """

    def __init__(self, dirpath: str, monitor: str = "val_loss",
                 mode: Literal["min", "max"] = "min", min_delta: float = 0.0,
                 models: tuple[str, ...] = ("model",)) -> None:
        if not isinstance(dirpath, str) or not dirpath:
            raise ConfigError(f"{_NAME}.dirpath", dirpath, "must be a non-empty string",
                              "pass a directory path or URL such as './best' or 's3://bucket/best'")
        if not isinstance(monitor, str) or not monitor:
            raise ConfigError(f"{_NAME}.monitor", monitor, "must be a non-empty string",
                              "name a key of the validation results such as 'val_loss'")
        require_choice(f"{_NAME}.mode", mode, ("min", "max"))
        require_number(f"{_NAME}.min_delta", min_delta, minimum=0.0)
        if isinstance(models, str) or not models:
            raise ConfigError(f"{_NAME}.models", models, "must be a non-empty tuple of names",
                              "pass e.g. ('model',)")
        self.dirpath = dirpath.rstrip("/")
        self.monitor = monitor
        self.mode = mode
        self.min_delta = float(min_delta)
        self.models = tuple(models)
        self.best = math.inf if mode == "min" else -math.inf
        self.best_step = -1

    def improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        trainer = self.trainer
        if trainer.sanity_checking:
            return
        if self.monitor not in result:
            raise ConfigError(f"{_NAME}.monitor", self.monitor,
                              f"is not among the validation results {sorted(result)}",
                              "pass one of those keys, or return it from validation_step")
        value = float(result[self.monitor])  # all-reduced: every rank decides the same
        if not self.improved(value):
            return
        self.best, self.best_step = value, trainer.global_step
        with self._validated_weights():  # written inside: the gathered tensors may be views
            tensors = {name: self._gather(name) for name in self.models}
            if trainer.world.is_global_zero:
                for name, state in tensors.items():
                    write_safetensors(state, f"{self.dirpath}/{name}.safetensors")
            del tensors
        if trainer.world.is_global_zero:
            record = {"monitor": self.monitor, "mode": self.mode, "value": value,
                      "step": trainer.global_step, "epoch": trainer.current_epoch,
                      "models": list(self.models), "metrics": dict(result)}
            with fsspec.open(f"{self.dirpath}/{BEST_RECORD}", "w") as f:
                json.dump(record, f, indent=2)
            logger.info("best %s=%.6g at step %d: weights written to %s", self.monitor, value,
                        trainer.global_step, self.dirpath)
        dist.barrier()

    def _validated_weights(self) -> contextlib.AbstractContextManager[None]:
        """The EMA weights if an EMACallback validated with them and already swapped them out."""
        from dream_trainer.callbacks.ema import EMACallback

        for callback in self.trainer.callbacks.values():
            if (isinstance(callback, EMACallback) and callback.use_for_validation
                    and callback._backup is None):
                return callback.average_weights()
        return contextlib.nullcontext()

    def _gather(self, model: str) -> dict[str, torch.Tensor]:
        trainer = self.trainer
        options = dcp_sd.StateDictOptions(full_state_dict=True, cpu_offload=True)
        local: dict[str, torch.Tensor] = {}
        for part in trainer.model_parts(model):
            reshard(part)  # after validation the FSDP root holds unsharded parameters
            local.update(dcp_sd.get_model_state_dict(part, options=options))
        if trainer.world.dims.pp > 1:  # stages live on different ranks
            parts: list[dict[str, torch.Tensor]] = [{} for _ in range(dist.get_world_size())]
            dist.all_gather_object(parts, local)
            return {name: t for part in parts for name, t in part.items()}
        return local

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = float(state_dict["best"])
        self.best_step = int(state_dict["best_step"])


def read_best_record(dirpath: str) -> dict[str, Any] | None:
    """The ``best.json`` a :class:`BestModelCallback` wrote in ``dirpath``, or None."""
    url = f"{dirpath.rstrip('/')}/{BEST_RECORD}"
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.load(f)


def best_checkpoint(root_dir: str, monitor: str = "val_loss",
                    mode: Literal["min", "max"] = "min") -> str | None:
    """URL of the committed checkpoint under ``root_dir`` with the best ``monitor`` in its commit
    record (the validation that preceded it), or None if there is none with that metric."""
    from dream_trainer.checkpoint.layout import checkpoint_name, metric_of, pick_resume
    from dream_trainer.checkpoint.storage import CheckpointStore

    store = CheckpointStore(root_dir)
    records = [r for r in store.committed() if metric_of(r, monitor) is not None]
    choice = pick_resume(records, "best", monitor, mode)
    return None if choice is None else store.url_of(checkpoint_name(choice.step))
