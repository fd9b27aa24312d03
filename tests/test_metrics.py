"""EvalMetricMixin: torchmetrics over the whole validation set, merged into validation results.

One 2-rank torchrun launch (``distributed/metric_scenarios.py``) runs FSDP, TP and PP scenarios;
the FSDP and TP metric values are compared with torchmetrics computed here, in one process, on all
of the validation data with the sharded run's final weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from dream_trainer import DreamTrainer, DreamTrainerConfig
from dream_trainer.callbacks import CheckpointCallback, LoggerCallback
from dream_trainer.configs import CheckpointParameters, ConfigError
from dream_trainer.trainer.mixins import EvalMetricConfigMixin, EvalMetricMixin
from metric_toy import MetricTrainer, full_parameters, metric_config, reference_metrics
from torchrun import torchrun

SCENARIOS = Path(__file__).parent / "distributed" / "metric_scenarios.py"
N_VAL = 48


@pytest.fixture(scope="module")
def ranks2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("metrics2")
    names = ["fsdp", "tp", "pp"]
    torchrun(SCENARIOS, 2, out, *names)
    return {name: torch.load(out / f"{name}.pt", weights_only=False) for name in names}


def flat_reference(params: dict[str, torch.Tensor]) -> dict[str, float]:
    """The single-process values under the names the mixin gives them."""
    ref = reference_metrics(params, N_VAL)
    out = {"val_accuracy": float(ref["accuracy"]), "val_seen": float(ref["seen"]),
           "val_f1": float(ref["scores"]["f1"]), "val_auroc": float(ref["scores"]["auroc"])}
    out |= {f"val_per_class/{i}": float(v) for i, v in enumerate(ref["scores"]["per_class"])}
    return out


def assert_metrics_match(got: dict[str, float], want: dict[str, float]) -> None:
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


# ---------------------------------------------------------------------------------- 2 ranks
@pytest.mark.parametrize("scenario", ["fsdp", "tp"])
def test_two_ranks_equal_one_process_on_all_data(ranks2, scenario) -> None:
    """FSDP (each rank sees half the samples) and TP (both ranks see all of them): the synced
    values equal one process's on the whole set. ``val_seen`` counts samples: 24 per rank
    unsynced under FSDP, 96 if TP peers were counted twice; AUROC gathers raw predictions."""
    got = ranks2[scenario]
    per_rank = got["results"]
    assert len(per_rank) == 2 and per_rank[0] == per_rank[1]  # every rank reports the same
    final = per_rank[0][-1]  # the last validation ran after the last step, with final weights
    assert got["global_step"] == 4
    assert final["val_seen"] == N_VAL
    assert_metrics_match(final, flat_reference(got["params"]))
    assert {r["val_seen"] for r in per_rank[0]} == {N_VAL}  # reset: sanity batch not carried


def test_pipeline_stages_report_the_last_stage_values(ranks2) -> None:
    stage0, stage1 = ranks2["pp"]["results"]
    assert stage0 == stage1
    assert stage0["val_last_stage_tokens"] == 16 * 17  # updated on the last stage only
    assert stage0["val_mean_loss"] == pytest.approx(stage0["val_loss"], rel=1e-6)


def test_two_ranks_only_rank_zero_logs(ranks2) -> None:
    rank0, rank1 = map(Path, ranks2["fsdp"]["log_dirs"])
    assert not rank1.exists()
    rows = [json.loads(line) for line in (rank0 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    val_rows = [r for r in rows if "val_accuracy" in r]
    assert [r["step"] for r in val_rows] == [2, 4]  # logged once each (by LoggerCallback)
    assert val_rows[-1]["val_auroc"] == pytest.approx(ranks2["fsdp"]["results"][0][-1]["val_auroc"])
    assert (rank0 / "loss_curve.png").stat().st_size > 5000


# ---------------------------------------------------------------------------------- 1 process
def test_metrics_are_tracked_apart_from_models(tmp_path) -> None:
    config = metric_config(steps=2, log_dir=str(tmp_path))
    trainer = MetricTrainer(config)
    trainer.fit()
    assert list(trainer.named_models()) == ["model"]
    assert list(trainer.named_metrics()) == ["accuracy", "scores", "seen"]
    assert "accuracy" not in vars(trainer)  # kept apart, yet an ordinary attribute to the user
    assert trainer.accuracy.device == trainer.device
    assert list(trainer.state_dict()["models"]) == ["model"]  # not checkpointed as a model
    assert_metrics_match(trainer.last_validation_result,
                         flat_reference(full_parameters(trainer)))
    # without a LoggerCallback the mixin logs the metrics itself
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2]
    assert rows[0]["val_accuracy"] == trainer.last_validation_result["val_accuracy"]
    assert "val_loss" not in rows[0]
    del trainer.seen
    assert "seen" not in trainer.named_metrics()


def test_checkpoint_monitor_sees_metrics(tmp_path) -> None:
    checkpoint = CheckpointCallback(CheckpointParameters(
        root_dir=str(tmp_path / "ckpt"), checkpoint_every_n_steps=2, checkpoint_every_n_epochs=None,
        monitor="val_accuracy", mode="max"))
    config = metric_config(steps=4, callbacks=[checkpoint], log_dir=str(tmp_path / "logs"),
                           log_metrics=False)
    MetricTrainer(config).fit()
    records = checkpoint.store.committed()
    assert [r.step for r in records] == [2, 4]
    for record in records:  # saved before step 3 and at the end: after validations at 2 and 4
        assert 0.0 <= record.metrics["val_accuracy"] <= 1.0
        assert record.metrics["val_seen"] == N_VAL
    assert not (tmp_path / "logs").exists()  # log_metrics=False and no LoggerCallback


def test_no_metrics_nothing_happens(tmp_path) -> None:
    config = metric_config(steps=2, with_metrics=False, log_dir=str(tmp_path / "logs"))
    trainer = MetricTrainer(config)
    trainer.fit()
    assert trainer.named_metrics() == {}
    assert set(trainer.last_validation_result) == {"val_loss"}
    assert not (tmp_path / "logs").exists()


def test_prefix_and_logger_callback(tmp_path) -> None:
    config = metric_config(steps=2, metric_prefix="eval/", log_dir=str(tmp_path),
                           callbacks=[LoggerCallback(log_every_n_train_batches=1)])
    trainer = MetricTrainer(config)
    trainer.fit()
    result = trainer.last_validation_result
    assert {"eval/accuracy", "eval/f1", "eval/seen", "val_loss"} <= set(result)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if "val_loss" in r]
    assert len(val_rows) == 1 and val_rows[0]["val/eval/accuracy"] == result["eval/accuracy"]


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"metric_prefix=3.*Fix"):
        EvalMetricConfigMixin(metric_prefix=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="log_metrics"):
        DreamTrainerConfig(log_metrics="yes")  # type: ignore[arg-type]
    assert issubclass(DreamTrainer, EvalMetricMixin)
