"""WandBParameters: where and how ``WandBLoggerMixin`` logs to Weights & Biases.

Every field left at None falls back to the ``WANDB_*`` environment variable the operator (or you)
may set, then to the trainer config's ``project`` / ``group`` / ``experiment``. Nothing here
imports wandb.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from dream_trainer.configs.errors import ConfigError, require_bool, require_choice
from dream_trainer.contract import JOB_NAME, JOB_UID

WANDB_MODES = ("online", "offline", "disabled", "shared")


@dataclass(kw_only=True)
class WandBParameters:
    """Weights & Biases run settings.

    Precedence for each of ``project``, ``entity``, ``group``, ``name``, ``mode``, ``dir`` and
    ``id``: the field when set, else ``WANDB_PROJECT`` / ``WANDB_ENTITY`` / ``WANDB_RUN_GROUP`` /
    ``WANDB_NAME`` / ``WANDB_MODE`` / ``WANDB_DIR`` / ``WANDB_RUN_ID``, else the trainer config
    (``project``, ``group``, ``experiment``). ``mode="offline"`` needs no account or network: the
    run is written under ``dir``/wandb/offline-run-* for ``wandb sync`` later.
    """

    project: str | None = None
    entity: str | None = None
    """Team or user; None: ``$WANDB_ENTITY``, else your default entity."""
    group: str | None = None
    name: str | None = None
    """Run name; None: ``$WANDB_NAME``, else the config's ``experiment``."""
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    mode: Literal["online", "offline", "disabled", "shared"] | None = None
    """None: ``$WANDB_MODE``, else wandb's default (online)."""
    dir: str | None = None
    """Where wandb writes its files (a ``wandb/`` folder is made inside); None: ``$WANDB_DIR``,
    else the working directory."""
    id: str | None = None
    """Run id. None: ``$WANDB_RUN_ID``; under the operator a stable id derived from the job's UID,
    so a job restarted after a failure keeps logging to the same run (``resume="allow"``)."""
    log_model: bool = False
    """At the end of training, log the newest committed checkpoint (if a checkpoint callback
    wrote one) as a ``model`` artifact, by reference: nothing is uploaded twice."""
    log_artifacts: bool = False
    """At the end of training, upload the local logger's run directory (metrics.jsonl,
    loss_curve.png, images) as a ``run-logs`` artifact, if the trainer has ``LocalLoggerMixin``."""
    log_code: bool = False
    """Save the main script with the run (wandb's ``save_code``); ``LoggerCallback(code_dir=...)``
    saves a whole source tree."""

    def __post_init__(self) -> None:
        name = "WandBParameters"
        for key in ("project", "entity", "group", "name", "notes", "dir", "id"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name}.{key}", value, "expected a non-empty str or None",
                                  "pass a string, or None to use the default")
        if isinstance(self.tags, str) or not all(isinstance(t, str) for t in self.tags):
            raise ConfigError(f"{name}.tags", self.tags, "expected a list of strings",
                              'pass e.g. tags=["baseline", "llama"]')
        self.tags = list(self.tags)
        if self.mode is not None:
            require_choice(f"{name}.mode", self.mode, WANDB_MODES)
        for flag in ("log_model", "log_artifacts", "log_code"):
            require_bool(f"{name}.{flag}", getattr(self, flag))

    def init_kwargs(self, trainer_config: Any = None,
                    env: dict[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for ``wandb.init``, after the precedence rules above."""
        env = dict(os.environ) if env is None else env
        project = getattr(trainer_config, "project", None)
        group = getattr(trainer_config, "group", None)
        experiment = getattr(trainer_config, "experiment", None)
        run_id = self.id or env.get("WANDB_RUN_ID")
        if run_id is None and env.get(JOB_UID):
            job = env.get(JOB_NAME, "job")
            run_id = f"{job}-{env[JOB_UID]}".replace("/", "-")[:64]
        kwargs: dict[str, Any] = {
            "project": self.project or env.get("WANDB_PROJECT") or project,
            "entity": self.entity or env.get("WANDB_ENTITY"),
            "group": self.group or env.get("WANDB_RUN_GROUP") or group,
            "name": self.name or env.get("WANDB_NAME") or experiment,
            "tags": self.tags or None,
            "notes": self.notes,
            "mode": self.mode or env.get("WANDB_MODE"),
            "dir": self.dir or env.get("WANDB_DIR"),
            "id": run_id,
            "resume": "allow" if run_id else None,
            "save_code": self.log_code,
        }
        return {key: value for key, value in kwargs.items() if value is not None}
