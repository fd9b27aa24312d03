"""Loggers: the local logger's files and loss curve, LoggerCallback, W&B in offline mode (real
wandb, its run file read back), and the conversions behind ``log_*``."""

from __future__ import annotations

import json
import struct
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from dream_trainer import BaseTrainer, BaseTrainerConfig
from dream_trainer.callbacks import Callback, CheckpointCallback, LoggerCallback
from dream_trainer.configs import CheckpointParameters, ConfigError, WandBParameters
from dream_trainer.trainer.mixins import (
    EvalMetricConfigMixin,
    EvalMetricMixin,
    LocalLoggerConfigMixin,
    SetupConfigMixin,
    SetupMixin,
    WandBLoggerConfigMixin,
    WandBLoggerMixin,
)
from dream_trainer.trainer.mixins.loggers import image_array, plot_loss_curve, read_metrics
from metric_toy import MetricConfig, MetricTrainer, metric_config
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class LogExtras(Callback):
    """Uses the rest of the interface from a callback, as user code would."""

    def post_fit(self) -> None:
        trainer = self.trainer
        trainer.log_image("samples/grid", torch.rand(2, 3, 8, 8), caption="two")
        trainer.log_histogram("weights/head", trainer.model.head.weight)
        trainer.log_table("predictions", ["x", "y"], [[1, "a"], [torch.tensor(2.5), "b"]])


# ---------------------------------------------------------------------------------- local
def test_local_run_writes_metrics_and_loss_curve(tmp_path) -> None:
    source = tmp_path / "src"
    for name in ("train.py", "pkg/model.py", ".git/hook.py", "pkg/__pycache__/m.py", "notes.txt"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("# code\n")
    logs = tmp_path / "logs"
    config = metric_config(steps=6, val_every=3, log_dir=str(logs), callbacks=[
        LoggerCallback(log_every_n_train_batches=2, log_every_n_val_batches=3, code_dir=source),
        LogExtras()])
    trainer = MetricTrainer(config)
    trainer.fit()
    with tarfile.open(logs / "code.tar.gz") as archive:
        assert sorted(archive.getnames()) == ["pkg/model.py", "train.py"]
    rows = rows_of(logs / "metrics.jsonl")
    # 6 validation batches: the mean of each 3, twice per validation
    assert [r["step"] for r in rows if "val_batch/val_loss" in r] == [3, 3, 6, 6]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all({"train/grad_norm", "lr/optimizer/0", "time"} <= set(r) for r in train)
    assert train[0]["lr/optimizer/0"] == pytest.approx(0.1)
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [3, 6]  # sanity validation is not logged
    assert val[-1]["val_loss"] == pytest.approx(trainer.last_validation_result["val_loss"])
    assert val[-1]["val_accuracy"] == trainer.last_validation_result["val_accuracy"]
    csv_lines = (logs / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "step,time,name,value"
    assert len(csv_lines) - 1 == sum(len(r) - 2 for r in rows)  # one line per value
    assert all(set(r) == {"step", "time", "val_batch/val_loss"} for r in rows
               if "val_batch/val_loss" in r)
    assert json.loads((logs / "config.json").read_text())["lr"] == 0.1
    png = (logs / "loss_curve.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000
    assert Image.open(logs / "loss_curve.png").size[0] > 300
    # the extras
    grid = Image.open(logs / "images" / "samples" / "grid" / "step_000000006.png")
    assert grid.size == (8 + 2 + 8, 8) and grid.mode == "RGB"
    histogram = rows_of(logs / "histograms.jsonl")[0]
    assert histogram["name"] == "weights/head" and sum(histogram["counts"]) == 4 * 16
    table = (logs / "tables" / "predictions" / "step_000000006.csv").read_text()
    assert table.splitlines() == ["x,y", "1,a", "2.5,b"]


class MicroBatchLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        self.losses.append(float(result["loss"].detach()))


def test_accumulation_means_and_a_fresh_run_truncates(tmp_path) -> None:
    recorder = MicroBatchLosses()

    def run() -> list[dict[str, Any]]:
        config = metric_config(steps=3, val_every=None, log_dir=str(tmp_path), with_metrics=False,
                               callbacks=[LoggerCallback(log_every_n_train_batches=2), recorder])
        config.training_parameters.gradient_accumulation_steps = 2
        config.training_parameters.train_batch_size = 4
        config.training_parameters.val_batch_size = 4
        MetricTrainer(config).fit()
        return rows_of(tmp_path / "metrics.jsonl")

    first = run()
    # steps 2 and the last, partial window (step 3) at post_fit; each the mean of its micro-batches
    assert [r["step"] for r in first] == [2, 3]
    losses = recorder.losses
    assert len(losses) == 6
    assert first[0]["train/loss"] == pytest.approx(sum(losses[:4]) / 4, rel=1e-6)
    assert first[1]["train/loss"] == pytest.approx(sum(losses[4:]) / 2, rel=1e-6)
    second = run()
    assert [r["step"] for r in second] == [2, 3]  # truncated, not appended
    assert second[0]["train/loss"] == pytest.approx(first[0]["train/loss"])


def test_read_metrics_keeps_the_latest_attempt_of_each_step(tmp_path) -> None:
    """A run killed after step 5 and resumed from its step-3 checkpoint appends steps 4.. again."""
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "train/loss": 10 - s} for s in (1, 2, 3)]
    lines += [{"step": 3, "val_loss": 7.5}]  # the same step again: not a new attempt
    lines += [{"step": s, "train/loss": 10 - s} for s in (4, 5)]
    lines += [{"step": s, "train/loss": 100 + s} for s in (4, 5, 6)]  # the resumed attempt
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 7, "trunc')
    rows = read_metrics(path)
    assert [(r["step"], r.get("train/loss")) for r in rows] == [
        (1, 9), (2, 8), (3, 7), (3, None), (4, 104), (5, 105), (6, 106)]
    assert plot_loss_curve(rows, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == PNG_MAGIC
    assert not plot_loss_curve([{"step": 1, "other": 1.0}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_image_array_layouts(tmp_path) -> None:
    chw = torch.zeros(3, 4, 5)
    chw[0] = 1.0
    out = image_array(chw)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and out[0, 0].tolist() == [255, 0, 0]
    assert image_array(np.zeros((4, 5, 3), dtype=np.uint8)).shape == (4, 5, 3)  # HWC
    assert image_array(torch.ones(1, 4, 5)).shape == (4, 5)  # grey
    assert image_array(np.linspace(-1, 1, 20).reshape(4, 5)).max() == 255  # normalised
    assert image_array(torch.zeros(2, 1, 4, 5)).shape == (4, 12)  # a batch, one row
    assert image_array(Image.new("RGBA", (5, 4))).shape == (4, 5, 4)
    with pytest.raises(TypeError, match="shape"):
        image_array(np.zeros((5, 6, 7)))
    with pytest.raises(TypeError, match="tensor, an array"):
        image_array([1, 2, 3])


def test_errors_name_the_fix(tmp_path) -> None:
    from first_trainer import MyTrainer, MyTrainerConfig

    with pytest.raises(TypeError, match="DreamTrainer.*LocalLoggerMixin"):
        MyTrainer(MyTrainerConfig(callbacks=[LoggerCallback()]))
    with pytest.raises(ConfigError, match="log_every_n_train_batches=0"):
        LoggerCallback(log_every_n_train_batches=0)
    with pytest.raises(ConfigError, match=r"LocalLoggerConfigMixin.log_dir=''.*Fix"):
        LocalLoggerConfigMixin(log_dir="")
    with pytest.raises(ConfigError, match="WandBParameters.mode='cloud'"):
        WandBParameters(mode="cloud")  # type: ignore[arg-type]
    trainer = MetricTrainer(metric_config(log_dir=str(tmp_path)))
    with pytest.raises(TypeError, match=r"'train/x' is a tensor of shape \(2,\)"):
        trainer.log_scalar("train/x", torch.ones(2))
    with pytest.raises(ValueError, match="reserved"):
        trainer.log_dict({"step": 1})
    with pytest.raises(FileNotFoundError, match="no image file"):
        trainer.log_image("x", tmp_path / "missing.png")


# ---------------------------------------------------------------------------------- wandb
def test_wandb_parameters_precedence() -> None:
    @dataclass
    class Cfg:
        project: str = "cfg-project"
        group: str = "cfg-group"
        experiment: str = "cfg-run"

    env = {"WANDB_PROJECT": "env-project", "WANDB_RUN_GROUP": "env-group", "WANDB_MODE": "offline",
           "DREAM_JOB_NAME": "llama", "DREAM_JOB_UID": "1234-abcd"}
    kwargs = WandBParameters().init_kwargs(Cfg(), env)
    assert kwargs["project"] == "env-project" and kwargs["group"] == "env-group"
    assert kwargs["name"] == "cfg-run" and kwargs["mode"] == "offline"
    assert kwargs["id"] == "llama-1234-abcd" and kwargs["resume"] == "allow"  # same run on restart
    explicit = WandBParameters(project="mine", group="g", mode="disabled", id="x")
    kwargs = explicit.init_kwargs(Cfg(), env)
    assert (kwargs["project"], kwargs["group"], kwargs["mode"], kwargs["id"]) == (
        "mine", "g", "disabled", "x")
    assert WandBParameters().init_kwargs(Cfg(), {})["project"] == "cfg-project"


def wandb_records(path: Path) -> list[Any]:
    """The records of a ``.wandb`` run file: LevelDB's log format (a 7-byte ``:W&B`` header, then
    32 KiB blocks of chunks, each with a 7-byte header: crc32c, length, FULL/FIRST/MIDDLE/LAST)
    holding ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding at the end of a block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (2, 3):  # FIRST, MIDDLE
            pending = (pending if kind == 3 else b"") + chunk
            continue
        payload, pending = (pending + chunk if kind == 4 else chunk), b""
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def finished_records(path: Path, timeout: float = 60.0) -> list[Any]:
    """The run file's records once wandb's service has written all of them: ``run.finish()``
    returns before the service process has flushed the file."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        kinds = {r.WhichOneof("record_type") for r in records}
        if {"run", "exit"} <= kinds or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@dataclass(kw_only=True)
class WandBConfig(MetricConfig, WandBLoggerConfigMixin):
    pass


class WandBTrainer(MetricTrainer, WandBLoggerMixin):
    config: WandBConfig


def test_wandb_offline_run(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_PROJECT": "from-env",
                       "WANDB_RUN_GROUP": "env-group", "WANDB_CONSOLE": "off",
                       "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    checkpoint = CheckpointCallback(CheckpointParameters(
        root_dir=str(tmp_path / "ckpt"), checkpoint_every_n_epochs=None))
    base = metric_config(steps=4, val_every=2,
                         callbacks=[LoggerCallback(1), LogExtras(), checkpoint])
    config = WandBConfig(**{k: getattr(base, k) for k in ("device_parameters",
                                                           "training_parameters", "callbacks")},
                         log_dir=str(tmp_path / "local"),
                         wandb_parameters=WandBParameters(dir=str(tmp_path), tags=["test"],
                                                          log_artifacts=True, log_model=True))
    trainer = WandBTrainer(config)
    trainer.fit()
    assert "_wandb_run" not in vars(trainer)  # finished
    [run_file] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = finished_records(run_file)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.run_group, list(run.tags)) == ("from-env", "env-group", ["test"])
    config_keys = {item.key for item in run.config.update}
    assert {"lr", "training_parameters", "wandb_parameters"} <= config_keys
    history = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                            for i in record.history.item})
    local = rows_of(tmp_path / "local" / "metrics.jsonl")
    train = [h for h in history if "train/loss" in h]
    assert [h["_step"] for h in train] == [1, 2, 3, 4]
    assert [h["train/loss"] for h in train] == pytest.approx(
        [r["train/loss"] for r in local if "train/loss" in r])  # both backends got every call
    val = [h for h in history if "val_accuracy" in h]
    assert [h["_step"] for h in val] == [2, 4]
    assert val[-1]["val_accuracy"] == trainer.last_validation_result["val_accuracy"]
    assert any(key.startswith("samples/grid/") for h in history for key in h)  # an image
    assert list(run_file.parent.glob("files/media/images/samples/grid_*.png"))
    exit_record = next(r.exit for r in records if r.WhichOneof("record_type") == "exit")
    assert exit_record.exit_code == 0
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert any(a.type == "run-logs" for a in artifacts)  # the local run dir, loss curve included
    [model] = [a for a in artifacts if a.type == "model"]  # the last checkpoint, by reference
    assert json.loads(model.metadata)["uri"].endswith("step_000000004")


@dataclass(kw_only=True)
class SeedConfig(BaseTrainerConfig, SetupConfigMixin, EvalMetricConfigMixin,
                 WandBLoggerConfigMixin):
    pass


class SeedTrainer(BaseTrainer, SetupMixin, EvalMetricMixin, WandBLoggerMixin):
    """Seed 002's composition: no local logger, W&B only."""


def test_seed_composition_logs_to_wandb_only(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    trainer = SeedTrainer(SeedConfig(wandb_parameters=WandBParameters(mode="disabled")))
    trainer.log_scalar("train/loss", torch.tensor(1.5))
    assert trainer.wandb_run.summary["train/loss"] == 1.5
    trainer.finish_logging()
    assert list(tmp_path.iterdir()) == []  # nothing local
