"""Checkpoints in one process, on local disk and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from dream_trainer.callbacks import AsyncCheckpointCallback, Callback, CheckpointCallback
from dream_trainer.checkpoint.layout import CommitRecord, pick_resume, to_delete
from dream_trainer.checkpoint.storage import CheckpointStore
from dream_trainer.cli import main as cli_main
from dream_trainer.configs import CheckpointParameters
from dream_trainer.contract import CHECKPOINT_URI, PREEMPTED_EXIT_CODE
from toy import ToyTrainer, run, toy_config


def every(root: str, n: int, kind: type[CheckpointCallback] = CheckpointCallback,
          **params: Any) -> CheckpointCallback:
    return kind(CheckpointParameters(root_dir=root, checkpoint_every_n_steps=n, **params))


def assert_bitwise(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name, value in want["params"].items():
        assert torch.equal(got["params"][name], value), name


@pytest.fixture(scope="module")
def uninterrupted() -> dict[str, Any]:
    return run(toy_config(steps=6))


@pytest.mark.parametrize("kind", [CheckpointCallback, AsyncCheckpointCallback])
@pytest.mark.parametrize("storage", ["local", "s3"])
def test_stop_and_resume_is_bitwise(request, tmp_path, uninterrupted, kind, storage) -> None:
    root = str(tmp_path) if storage == "local" else request.getfixturevalue("s3_bucket") + "/run"
    first = run(toy_config(steps=3, callbacks=[every(root, 3, kind)]))
    callback = every(root, 3, kind)
    second = run(toy_config(steps=6, callbacks=[callback]))
    assert callback.resumed_from is not None and callback.resumed_from.step == 3
    assert first["losses"] + second["losses"] == uninterrupted["losses"]
    assert_bitwise(second, uninterrupted)
    assert [r.step for r in CheckpointStore(root).committed()] == [3, 6]


def test_uncommitted_and_corrupt_checkpoints_are_skipped(tmp_path, uninterrupted) -> None:
    run(toy_config(steps=4, callbacks=[every(str(tmp_path), 2, keep_top_k=5)]))
    store = CheckpointStore(str(tmp_path))
    assert [r.step for r in store.committed()] == [2, 4]
    # A save that never committed (a crash mid-write) is invisible...
    (tmp_path / "step_000000006").mkdir()
    (tmp_path / "step_000000006" / "__0_0.distcp").write_bytes(b"partial")
    assert [r.step for r in store.committed()] == [2, 4]
    # ...and a committed checkpoint whose shard is damaged falls back to the previous one.
    (tmp_path / "step_000000004" / "__0_0.distcp").write_bytes(b"garbage")
    callback = every(str(tmp_path), 100)
    resumed = run(toy_config(steps=6, callbacks=[callback]))
    assert callback.resumed_from.step == 2
    assert_bitwise(resumed, uninterrupted)


def test_keep_top_k_by_metric_never_drops_the_newest(tmp_path) -> None:
    class Metrics(Callback):
        """Each checkpoint's record carries the validation that ran before it."""

        def __init__(self) -> None:
            self.val_loss: dict[int, float] = {}

        def post_validation_epoch(self, result: dict[str, Any]) -> None:
            self.val_loss[self.trainer.global_step] = result["val_loss"]

    metrics = Metrics()
    run(toy_config(steps=6, callbacks=[metrics, every(str(tmp_path), 1, keep_top_k=2)],
                   val_every_n_steps=1, val_steps_per_epoch=1))
    records = CheckpointStore(str(tmp_path)).committed()
    assert {r.step: r.metrics["val_loss"] for r in records} == {
        r.step: metrics.val_loss[r.step] for r in records}
    best_two = sorted(metrics.val_loss, key=metrics.val_loss.get)[:2]
    assert {r.step for r in records} == {*best_two, 6}  # the two best, and always the newest


def test_retention_and_resume_choice() -> None:
    def rec(step: int, loss: float | None) -> CommitRecord:
        return CommitRecord(step=step, epoch=0, world_size=1,
                            metrics={} if loss is None else {"val_loss": loss})

    records = [rec(1, 3.0), rec(2, 1.0), rec(3, 2.0), rec(4, 5.0)]
    assert [r.step for r in to_delete(records, 2, "val_loss", "min")] == [1]  # 4 is newest
    assert [r.step for r in to_delete(records, 2, "val_loss", "max")] == [2, 3]
    assert [r.step for r in to_delete([rec(1, None), rec(2, None), rec(3, None)], 1,
                                      "val_loss", "min")] == [1, 2]
    assert pick_resume(records, "latest", "val_loss", "min").step == 4
    assert pick_resume(records, "best", "val_loss", "min").step == 2
    assert pick_resume(records, "best", "val_loss", "max").step == 4
    assert pick_resume([rec(1, None), rec(2, None)], "best", "val_loss", "min").step == 2
    assert pick_resume([], "latest", "val_loss", "min") is None


def test_weights_only_resume_restarts_counters(tmp_path) -> None:
    trained = run(toy_config(steps=3, callbacks=[every(str(tmp_path), 3)]))
    callback = every(str(tmp_path / "finetune"), 100,
                     resume_path=str(tmp_path / "step_000000003"), model_weights_only=True)
    trainer = ToyTrainer(toy_config(steps=1, lr=0.0, callbacks=[callback]))
    trainer.fit()
    assert trainer.global_step == 1  # counters start over; weights came from the checkpoint
    for name, value in trained["params"].items():
        got = dict(trainer.model.named_parameters())[name]
        assert torch.equal(got.detach(), value), name


def test_resumes_from_the_operator_environment(tmp_path, monkeypatch, uninterrupted) -> None:
    monkeypatch.setenv(CHECKPOINT_URI, str(tmp_path))
    run(toy_config(steps=3))  # no checkpoint callback configured: added from the environment
    assert [r.step for r in CheckpointStore(str(tmp_path)).committed()] == [3]
    trainer = ToyTrainer(toy_config(steps=6))
    trainer.fit()
    assert trainer.callbacks["CheckpointCallback"].resumed_from.step == 3
    for name, value in uninterrupted["params"].items():
        assert torch.equal(dict(trainer.model.named_parameters())[name].detach(), value)


class SigtermAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        if self.trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_finishes_the_step_checkpoints_and_exits_143(tmp_path, uninterrupted) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        run(toy_config(steps=6, callbacks=[every(str(tmp_path), 100), SigtermAt(2)]))
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
    records = CheckpointStore(str(tmp_path)).committed()
    assert [(r.step, r.reason) for r in records] == [(2, "preemption")]
    resumed = run(toy_config(steps=6, callbacks=[every(str(tmp_path), 100)]))
    assert_bitwise(resumed, uninterrupted)


def test_export_writes_consolidated_safetensors(tmp_path, capsys) -> None:
    from dream_trainer.callbacks import ExportCallback

    result = run(toy_config(steps=2, callbacks=[every(str(tmp_path), 2),
                                                ExportCallback(str(tmp_path / "final.safetensors"))]))
    exported = load_file(tmp_path / "final.safetensors")
    assert exported.keys() == result["params"].keys()
    for name, value in result["params"].items():
        assert torch.equal(exported[name], value), name
    cli_main(["export", str(tmp_path / "step_000000002"), str(tmp_path / "cli.safetensors")])
    from_cli = load_file(tmp_path / "cli.safetensors")
    assert all(torch.equal(from_cli[k], exported[k]) for k in exported)
    assert "wrote 21 tensors" in capsys.readouterr().out


def test_bad_checkpoint_parameters_name_the_field() -> None:
    from dream_trainer.configs import ConfigError

    with pytest.raises(ConfigError, match="preemption_grace_seconds"):
        CheckpointParameters(preemption_grace_seconds=-1)
    assert Path(CheckpointParameters(root_dir="relative/dir").root_dir) == Path("relative/dir")
