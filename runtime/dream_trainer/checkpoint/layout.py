"""Pure decisions about checkpoints: names, which one to resume, which ones to delete.

A checkpoint is a directory ``step_000001200`` under the root. It counts only once its commit
record (``COMMITTED``, written last, after every rank finished) exists; everything here looks at
committed checkpoints only, so an interrupted save is never resumed from nor kept over a good one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

COMMIT_FILE = "COMMITTED"
_NAME = re.compile(r"^step_(\d{9})$")


@dataclass(frozen=True)
class CommitRecord:
    """What the commit record says about a checkpoint."""

    step: int
    epoch: int
    world_size: int
    metrics: dict[str, float] = field(default_factory=dict)
    time: float = 0.0
    reason: str = "scheduled"
    """``scheduled``, ``last`` or ``preemption``."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


def parse_step(name: str) -> int | None:
    """The step of a checkpoint directory name, or None for anything else."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def metric_of(record: CommitRecord, monitor: str) -> float | None:
    value = record.metrics.get(monitor)
    return None if value is None or math.isnan(value) else value


def pick_resume(records: list[CommitRecord], mode: Literal["latest", "best"], monitor: str,
                direction: Literal["min", "max"]) -> CommitRecord | None:
    """The committed checkpoint to resume from: the newest, or the best by ``monitor`` (falling
    back to the newest when none has the metric)."""
    if not records:
        return None
    newest = max(records, key=lambda r: r.step)
    if mode == "latest":
        return newest
    ranked = [r for r in records if metric_of(r, monitor) is not None]
    if not ranked:
        return newest
    sign = 1.0 if direction == "min" else -1.0
    return min(ranked, key=lambda r: (sign * metric_of(r, monitor), -r.step))  # type: ignore[operator]


def to_delete(records: list[CommitRecord], keep_top_k: int, monitor: str,
              direction: Literal["min", "max"]) -> list[CommitRecord]:
    """Committed checkpoints that top-k retention removes.

    Kept: the ``keep_top_k`` best by ``monitor`` (the newest ones when no checkpoint carries the
    metric), and always the newest committed one, so cleanup can never leave a job without its
    latest resume point.
    """
    if not records:
        return []
    newest = max(records, key=lambda r: r.step)
    sign = 1.0 if direction == "min" else -1.0

    def rank(r: CommitRecord) -> tuple[int, float, int]:
        value = metric_of(r, monitor)
        # Checkpoints with the metric rank before those without; then by metric; then newest.
        return (0, sign * value, -r.step) if value is not None else (1, 0.0, -r.step)

    keep = {r.step for r in sorted(records, key=rank)[:keep_top_k]}
    keep.add(newest.step)
    return sorted((r for r in records if r.step not in keep), key=lambda r: r.step)
