"""Data parallelism on real processes (gloo) against a single-process reference.

Two torchrun launches (2 and 4 ranks) run every scenario of ``distributed/scenarios.py``; the
references run here, in this process, as a world of one on the same global batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torchrun import torchrun
from toy import run, toy_config

SCENARIOS = Path(__file__).parent / "distributed" / "scenarios.py"
MODEL_PARALLEL = ["tp", "tp_loss_parallel", "tp_pp", "pp_gpipe", "pp_1f1b",
                  "pp_interleaved_1f1b", "pp_interleaved_zb", "pp_zbv"]
LAUNCHES = {
    2: ["fsdp", "ddp", "fsdp_accumulate", "ddp_accumulate", "fsdp_zero2", "fsdp_optimized",
        "fsdp_bf16", "cp_sharding", "first_trainer", "progress_server"],
    4: ["fsdp", "hsdp", "ddp", *MODEL_PARALLEL],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for nproc, scenarios in LAUNCHES.items():
        folder = tmp_path_factory.mktemp(f"ranks{nproc}")
        torchrun(SCENARIOS, nproc, folder, *scenarios)
        out[nproc] = {name: torch.load(folder / f"{name}.pt") for name in scenarios}
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """Single process, global batch 8, 4 steps: the result every sharding must reproduce."""
    return run(toy_config())


def assert_same_training(got: dict[str, Any], want: dict[str, Any]) -> None:
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(want["losses"]),
                               rtol=1e-5, atol=1e-6)
    assert got["params"].keys() == want["params"].keys()
    for name, value in want["params"].items():
        torch.testing.assert_close(got["params"][name], value, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(("nproc", "scenario"),
                         [(2, "fsdp"), (2, "ddp"), (2, "fsdp_zero2"), (4, "fsdp"),
                          (4, "hsdp"), (4, "ddp")])
def test_data_parallel_matches_single_process(results, reference, nproc, scenario) -> None:
    got = results[nproc][scenario]
    assert got["global_step"] == 4
    assert len(got["losses"]) == 4
    assert_same_training(got, reference)


@pytest.mark.parametrize("scenario", ["fsdp_accumulate", "ddp_accumulate"])
def test_accumulating_4x2_equals_one_batch_of_8(results, scenario) -> None:
    """Gradient sync is skipped on accumulating micro-batches, yet the step equals a batch of 8."""
    one_batch = run(toy_config(steps=2, batch=8))
    got = results[2][scenario]
    assert got["global_step"] == 2
    assert got["synced"] == [False] * 6  # 3 accumulating micro-batches per step, none reduced
    assert_same_training(got, one_batch)


def test_optimize_fsdp_records_execution_order_and_keeps_results(results, reference) -> None:
    got = results[2]["fsdp_optimized"]
    # The root unit (the model) runs first, then each block unit.
    assert got["order"] == ["FSDPLlama", "FSDPTransformerBlock", "FSDPTransformerBlock"]
    assert_same_training(got, reference)


def test_bf16_mixed_precision_tracks_fp32(results, reference) -> None:
    """bf16 compute with fp32 reduction: close to fp32 training, not bitwise equal."""
    got = results[2]["fsdp_bf16"]
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(reference["losses"]),
                               rtol=2e-2, atol=0.0)
    assert got["losses"] != reference["losses"]  # bf16 really was used
    assert all(p.dtype == torch.float32 for p in got["params"].values())  # fp32 master weights


def test_accumulation_single_process_equals_one_batch() -> None:
    assert_same_training(run(toy_config(steps=2, batch=2, accumulation=4)),
                         run(toy_config(steps=2, batch=8)))


def test_seed_first_trainer_learns_under_fsdp(results) -> None:
    got = results[2]["first_trainer"]
    losses = got["losses"]
    assert got["global_step"] == 2 * 256 // 16
    assert losses[-1] < 0.5 * losses[0], losses
    assert got["val"]["val_loss"] < losses[0]


def test_only_rank_zero_serves_progress(results, reference) -> None:
    got = results[2]["progress_server"]
    assert got["ports"][0] is not None and got["ports"][1] is None
    assert [p["step"] for p in got["fetched"]] == [1, 2, 3, 4]  # rank 0, over HTTP
    zero, one = got["snapshots"]
    assert zero["step"] == 4 and zero["phase"] == "finished" and zero["loss"] is not None
    assert one == {"last_checkpoint": None}  # no hook ran on rank 1
    assert_same_training(got, reference)  # serving changes nothing in the training


@pytest.fixture(scope="module")
def reference_4_layers() -> dict[str, Any]:
    return run(toy_config(n_layers=4, val_every_n_steps=4, val_steps_per_epoch=2))


@pytest.mark.parametrize("scenario", MODEL_PARALLEL)
def test_model_parallel_matches_single_process(results, reference_4_layers, scenario) -> None:
    """dp_shard x tp, tp x pp and dp x pp for every schedule: same losses, parameters and
    validation loss as one process (validation runs through the pipeline's eval)."""
    got = results[4][scenario]
    assert got["global_step"] == 4
    assert_same_training(got, reference_4_layers)
    if scenario != "pp_zbv":  # PyTorch cannot eval() a V-shaped schedule (see pipeline_step)
        assert got["val"]["val_loss"] == pytest.approx(reference_4_layers["val"]["val_loss"],
                                                       rel=1e-5)


def test_context_parallel_shards_batch_and_rope_load_balanced(results) -> None:
    """On CPU, context parallelism can shard but not train: check the sharding. The sequence is
    cut into 2·cp chunks and rank r keeps chunks r and 2·cp-1-r, so each rank has as many early
    (cheap) as late (expensive) causal positions. The batch stays sharded after the context; the
    model's buffers are restored."""
    got = results[2]["cp_sharding"]
    tokens = torch.arange(2 * 16).reshape(2, 16)
    rope = got["rope"]
    chunk = 16 // 4
    for shard in got["shards"]:
        r = shard["rank"]
        keep = [*range(r * chunk, (r + 1) * chunk), *range((3 - r) * chunk, (4 - r) * chunk)]
        assert torch.equal(shard["tokens"], tokens[:, keep])
        assert torch.equal(shard["rope"], rope[keep])
    assert got["tokens_after"] == (2, 8) and got["rope_restored"]
