"""Checkpoint scenarios under torchrun: uninterrupted runs, runs killed mid-training or mid-save,
SIGTERM, and resumes on the same or another number of ranks.

    python -m torch.distributed.run --standalone --nproc-per-node N \
        tests/distributed/checkpoint_scenarios.py OUT_DIR ROOT SCENARIO [SCENARIO ...]

ROOT is where checkpoints go (a local path or an s3:// URL). Rank 0 saves each scenario's result
to OUT_DIR/<scenario>.pt. Scenarios that kill the job come last in a launch.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dream_trainer.callbacks import Callback  # noqa: E402
from dream_trainer.callbacks.checkpoint import CheckpointCallback  # noqa: E402
from dream_trainer.configs import CheckpointParameters, DeviceParameters  # noqa: E402
from toy import run, toy_config  # noqa: E402

STEPS = 8  # one epoch: 64 samples, global batch 8


class SampleRecorder(Callback):
    """The sample indices of every global batch, gathered over the data-parallel ranks."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def pre_train_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        mesh = self.trainer.world.dp_mesh
        local = batch["index"].to(self.trainer.device)
        gathered = [torch.empty_like(local) for _ in range(mesh.size())]
        dist.all_gather(gathered, local, group=mesh.get_group())
        self.batches.append(sorted(int(i) for t in gathered for i in t))


class KillAfterStep(Callback):
    """SIGKILL every rank right after optimizer step ``step`` (no chance to clean up)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        if not self.trainer.is_accumulating_gradients and self.trainer.global_step + 1 == self.step:
            dist.barrier()
            os.kill(os.getpid(), signal.SIGKILL)


class DiesInSecondSave(CheckpointCallback):
    """Rank 1 is SIGKILLed while the second checkpoint's shards are being written."""

    def _app_state(self) -> dict[str, Any]:
        state = super()._app_state()
        if self.trainer.global_step > 0 and self.last_saved_step > 0:
            if dist.get_rank() == 1:
                time.sleep(0.2)  # let rank 0 start writing its shard
                os.kill(os.getpid(), signal.SIGKILL)
        return state


class SlowSteps(Callback):
    """Slows steps down and logs each finished step, so a test can SIGTERM mid-training."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        time.sleep(0.3)
        if self.trainer.world.is_global_zero:
            with self.log.open("a") as f:
                f.write(f"{self.trainer.global_step + 1}\n")


def fsdp(root: str, *callbacks: Callback) -> dict[str, Any]:
    recorder = SampleRecorder()
    result = run(toy_config(DeviceParameters.FSDP(), steps=STEPS, n_epochs=None,
                            callbacks=[*callbacks, recorder]))
    checkpoint = next((c for c in callbacks if isinstance(c, CheckpointCallback)), None)
    resumed = checkpoint.resumed_from.step if checkpoint and checkpoint.resumed_from else None
    return {**result, "batches": recorder.batches, "resumed_from": resumed}


def every(root: str, n: int, **params: Any) -> CheckpointCallback:
    return CheckpointCallback(CheckpointParameters(root_dir=root, checkpoint_every_n_steps=n,
                                                   **params))


SCENARIOS: dict[str, Callable[[str], dict[str, Any]]] = {
    "uninterrupted": lambda root: fsdp(root, every(f"{root}/uninterrupted", 3)),
    "killed": lambda root: fsdp(root, every(f"{root}/killed", 3), KillAfterStep(4)),
    "resumed": lambda root: fsdp(root, every(f"{root}/killed", 3)),
    # Saved on 4 ranks (by "killed" in a 4-rank launch), resumed here on another world size.
    "resharded": lambda root: fsdp(root, every(f"{root}/resharded", 3,
                                               resume_path=os.environ["RESHARD_FROM"])),
    "killed_in_save": lambda root: fsdp(root, DiesInSecondSave(CheckpointParameters(
        root_dir=f"{root}/in_save", checkpoint_every_n_steps=2))),
    "after_killed_save": lambda root: fsdp(root, every(f"{root}/in_save", 2)),
    "sigterm": lambda root: fsdp(root, every(f"{root}/sigterm", 100),
                                 SlowSteps(Path(os.environ["SIGTERM_LOG"]))),
    "after_sigterm": lambda root: fsdp(root, every(f"{root}/sigterm", 100)),
}


def main(out_dir: str, root: str, names: list[str]) -> None:
    for name in names:
        result = SCENARIOS[name](root)
        if dist.get_rank() == 0:
            torch.save(result, Path(out_dir) / f"{name}.pt")
        dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
