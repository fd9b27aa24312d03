"""CheckpointParameters: where and when checkpoints are written and which one to resume from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from dream_trainer.configs.errors import (
    ConfigError,
    require_bool,
    require_choice,
    require_int,
    require_number,
)
from dream_trainer.contract import CHECKPOINT_URI


@dataclass(kw_only=True)
class CheckpointParameters:
    """Checkpointing policy. ``root_dir`` is any fsspec URL: a local path, ``file://``, ``s3://``."""

    root_dir: str | None = None
    """Where checkpoints live. None: ``$DREAM_CHECKPOINT_URI`` (set by the operator), else
    ``./checkpoints``."""
    monitor: str = "val_loss"
    """Metric (a key of the validation results) that ranks checkpoints for ``keep_top_k``."""
    mode: Literal["min", "max"] = "min"
    checkpoint_every_n_epochs: int | None = 1
    checkpoint_every_n_steps: int | None = None
    keep_top_k: int = 3
    save_last: bool = True
    resume_mode: Literal["latest", "best"] = "latest"
    resume_path: str | None = None
    """Resume from exactly this checkpoint instead of searching ``root_dir``."""
    strict_load: bool = True
    model_weights_only: bool = False
    """Load only model weights (fine-tuning from a checkpoint): no optimizer, counters or data."""
    preemption_grace_seconds: float = 30.0
    """After SIGTERM, write an emergency checkpoint only if it can finish within this many
    seconds (judged by the last save's duration); keep it below the pod's
    terminationGracePeriodSeconds."""

    def __post_init__(self) -> None:
        name = "CheckpointParameters"
        if self.root_dir is None:
            self.root_dir = os.environ.get(CHECKPOINT_URI) or "./checkpoints"
        if not isinstance(self.root_dir, str) or not self.root_dir:
            raise ConfigError(f"{name}.root_dir", self.root_dir, "must be a non-empty string",
                              "pass a path or URL such as './checkpoints' or 's3://bucket/run'")
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ConfigError(f"{name}.monitor", self.monitor, "must be a non-empty string",
                              "name a validation metric such as 'val_loss'")
        require_choice(f"{name}.mode", self.mode, ("min", "max"))
        require_choice(f"{name}.resume_mode", self.resume_mode, ("latest", "best"))
        require_int(f"{name}.checkpoint_every_n_epochs", self.checkpoint_every_n_epochs,
                    minimum=1, allow_none=True)
        require_int(f"{name}.checkpoint_every_n_steps", self.checkpoint_every_n_steps,
                    minimum=1, allow_none=True)
        require_int(f"{name}.keep_top_k", self.keep_top_k, minimum=1)
        for flag in ("save_last", "strict_load", "model_weights_only"):
            require_bool(f"{name}.{flag}", getattr(self, flag))
        require_number(f"{name}.preemption_grace_seconds", self.preemption_grace_seconds,
                       minimum=0.0)
