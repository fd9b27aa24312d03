"""Progress bar, summaries, gc control, profiler and benchmark callbacks on the toy trainer."""

from __future__ import annotations

import gc
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import dream_trainer.callbacks
import pytest
import torch
from dream_trainer.callbacks import Callback, CheckpointCallback, ProgressCallback
from dream_trainer.callbacks.benchmark import BenchmarkCallback, percentile
from dream_trainer.callbacks.garbage_collection import GarbageCollectionCallback
from dream_trainer.callbacks.profiler import ProfilerCallback
from dream_trainer.callbacks.progress_bar import ProgressBarCallback, render_bar
from dream_trainer.callbacks.summary import ROOT_ROW, ModelSummaryCallback, summarize_model
from dream_trainer.configs import CheckpointParameters, ConfigError
from torch import nn
from torchrun import torchrun
from toy import ToyTrainer, toy_config

SCENARIO = Path(__file__).parent / "distributed" / "progress_tools_scenario.py"
TOY_PARAMS = 61_600  # tests/toy.py's Llama, counted by hand in test_model_summary_counts_by_hand


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_exported_from_dream_trainer_callbacks() -> None:
    for kind in (BenchmarkCallback, GarbageCollectionCallback, ModelSummaryCallback,
                 ProfilerCallback, ProgressBarCallback):
        assert getattr(dream_trainer.callbacks, kind.__name__) is kind
        assert kind.__name__ in dream_trainer.callbacks.__all__


# ------------------------------------------------------------------------------ progress bar
def test_render_bar() -> None:
    assert render_bar(0, 10, 10) == "[>         ]"
    assert render_bar(5, 10, 10) == "[=====>    ]"
    assert render_bar(10, 10, 10) == "[==========]"
    assert render_bar(12, 10, 4) == "[====]"


def test_bar_redraws_in_place_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    out = Terminal()
    bar = ProgressBarCallback(every_n_steps=2, stream=out)
    config = toy_config(steps=6, accumulation=2, callbacks=[bar], val_every_n_steps=3)
    ToyTrainer(config).fit()
    losses = config.callbacks["LossRecorder"].losses
    text = out.getvalue()
    lines = text.split("\n")
    # Bars are rewritten with \r; only validation results and the end get their own lines.
    assert [line.rsplit("\r", 1)[-1].split(" |")[0].split(" in ")[0] for line in lines[:-1]] == [
        "validation @ step 3", "validation @ step 6",
        "[==============================] 6/6 100%", "done: 6 steps"]
    frames = [f for f in re.split(r"[\r\n]", text) if f.startswith("[")]
    assert [f.split("] ")[1].split(" |")[0] for f in frames] == [
        "1/6  16%", "2/6  33%", "3/6  50%", "3/6  50%", "4/6  66%", "5/6  83%", "6/6 100%",
        "6/6 100%"]
    # The loss is the mean of the last two steps over ranks, refreshed every 2 steps.
    shown = [re.search(r"loss (\S+)", f).group(1) for f in frames]
    assert shown[0] == "-"
    assert float(shown[1]) == pytest.approx(sum(losses[:2]) / 2, abs=1e-4)
    assert float(shown[-1]) == pytest.approx(sum(losses[4:]) / 2, abs=1e-4)
    assert bar.summary["steps"] == 6 and bar.summary["loss"] == pytest.approx(
        sum(losses[4:]) / 2, rel=1e-6)
    # A shorter frame blanks what is left of the longer one before it.
    assert "\r" + " " * 20 in text or all(len(f) == len(frames[0]) for f in frames)


def test_bar_fits_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    out = Terminal()
    ToyTrainer(toy_config(steps=2, callbacks=[ProgressBarCallback(stream=out)])).fit()
    frames = [f for f in re.split(r"[\r\n]", out.getvalue()) if f.strip() and "done" not in f]
    assert frames and all(len(f) <= 39 for f in frames)


def test_bar_prints_progress_lines_without_a_terminal() -> None:
    bar_out, line_out = io.StringIO(), io.StringIO()
    bar = ProgressBarCallback(every_n_steps=2, stream=bar_out)
    lines = ProgressCallback(every_n_steps=2, stream=line_out)
    ToyTrainer(toy_config(steps=5, callbacks=[bar, lines], val_every_n_steps=4)).fit()
    assert "\r" not in bar_out.getvalue()

    def without_timing(text: str) -> list[str]:  # throughput, ETA and duration vary by run
        return [re.sub(r" \| [\d,]+ tok/s.*| in \d+m\d+s", "", line)
                for line in text.splitlines()]

    got = without_timing(bar_out.getvalue())
    assert got == without_timing(line_out.getvalue())
    assert [line.split(" |")[0] for line in got] == [
        "step 2/5", "step 4/5", "validation @ step 4", "step 5/5", "done: 5 steps"]
    assert bar.summary["loss"] == lines.summary["loss"]


def test_bar_leaves_the_line_on_errors() -> None:
    out = Terminal()

    class Boom(Callback):
        def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
            if self.trainer.global_step == 1:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ToyTrainer(toy_config(steps=4, callbacks=[ProgressBarCallback(stream=out),
                                                  Boom()])).fit()
    assert out.getvalue().startswith("\r[") and out.getvalue().endswith("\n")


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"ProgressBarCallback.every_n_steps=0.*Fix"):
        ProgressBarCallback(every_n_steps=0)
    with pytest.raises(ConfigError, match=r"GarbageCollectionCallback.generation=3"):
        GarbageCollectionCallback(generation=3)
    with pytest.raises(ConfigError, match=r"ProfilerCallback.active=0"):
        ProfilerCallback(active=0)
    with pytest.raises(ConfigError, match=r"ProfilerCallback.ranks=\(-1,\)"):
        ProfilerCallback(ranks=[-1])
    with pytest.raises(ConfigError, match=r"BenchmarkCallback.warmup_steps=-1"):
        BenchmarkCallback(warmup_steps=-1)


# ------------------------------------------------------------------------------ summaries
class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)                     # 40
        self.proj = nn.Linear(4, 3).to(torch.bfloat16)       # 4*3 + 3 = 15
        self.frozen = nn.Linear(3, 2, bias=False)            # 6, not trainable
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight                 # tied: counted once in totals
        self.scale = nn.Parameter(torch.ones(5))             # 5, on the root


def test_model_summary_counts_by_hand() -> None:
    summary = summarize_model(Tiny(), "tiny")
    rows = {r.name: (r.type, r.params, r.trainable, r.local, r.dtype, r.parallel)
            for r in summary.rows}
    assert rows == {
        "embed": ("Embedding", 40, 40, 40, "float32", "none"),
        "proj": ("Linear", 15, 15, 15, "bfloat16", "none"),
        "frozen": ("Linear", 6, 0, 6, "float32", "none"),
        "head": ("Linear", 40, 40, 40, "float32", "none"),
        ROOT_ROW: ("Tiny", 5, 5, 5, "float32", "none"),
    }
    assert (summary.params, summary.trainable, summary.local) == (66, 60, 66)
    text = summary.format()
    assert text.splitlines()[0] == "model 'tiny' (Tiny): 66 parameters (60 trainable), 66 on " \
                                   "this rank"
    assert re.search(r"frozen\s+Linear\s+6\s+0\s+6\s+float32\s+none", text)
    with pytest.raises(KeyError, match="no top-level module 'nope'"):
        summary.row("nope")
    # The toy Llama (dim 32, vocab 64, FFN hidden 256, 2 layers), by hand.
    llama = summarize_model(_toy_llama())
    layer = 4 * 32 * 32 + 3 * 32 * 256 + 2 * 32  # wq wk wv wo, w1 w2 w3, two RMSNorms
    assert {r.name: r.params for r in llama.rows} == {
        "tok_embeddings": 64 * 32, "layers": 2 * layer, "norm": 32, "output": 32 * 64}
    assert llama.params == TOY_PARAMS == 64 * 32 + 2 * layer + 32 + 32 * 64


def test_placement_labels_for_ddp_and_hsdp() -> None:
    from dream_trainer.configs import DeviceParameters
    from dream_trainer.parallel import apply_ddp
    from dream_trainer.world import DistributedWorld
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    DistributedWorld(DeviceParameters.SINGLE_DEVICE())  # a world of one, if none yet
    ddp = apply_ddp(Tiny(), init_device_mesh("cpu", (1,), mesh_dim_names=("dp",)))
    assert {r.parallel for r in summarize_model(ddp).rows} == {"DDP"}
    mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("dp_replicate", "dp_shard"))
    hsdp = Tiny()
    hsdp.proj.float()  # FSDP needs one dtype per unit
    fully_shard(hsdp.proj, mesh=mesh)
    fully_shard(hsdp, mesh=mesh)
    summary = summarize_model(hsdp)
    assert {r.parallel for r in summary.rows} == {"HSDP(dp_replicate=1, dp_shard=1)"}
    assert summary.params == 66 and summary.type == "FSDPTiny"


def _toy_llama() -> nn.Module:
    from dream_trainer.models import Llama
    from toy import ARGS

    return Llama(ARGS)


def test_summary_callback_prints_models_and_trainer(tmp_path: Path) -> None:
    out = io.StringIO()
    checkpoints = CheckpointCallback(CheckpointParameters(root_dir=str(tmp_path / "ckpt"),
                                                          checkpoint_every_n_steps=100))
    summary = ModelSummaryCallback(stream=out)
    ToyTrainer(toy_config(steps=3, batch=4, accumulation=2,
                          callbacks=[summary, checkpoints])).fit()
    text = out.getvalue()
    assert text == summary.text + "\n"
    assert text.startswith(f"model 'model' (Llama): {TOY_PARAMS:,} parameters")
    got = summary.trainer_summary
    assert got["world size"] == "1"
    assert got["mesh"] == "pp=1 dp_replicate=1 dp_shard=1 cp=1 tp=1"
    assert got["device"] == "cpu (gloo)" and got["precision"] == "float32"
    assert got["batch size"] == "4 global, 4 per data-parallel rank (1 rank)"
    assert got["gradient accumulation"] == "2 micro-batches: 8 samples per optimizer step"
    assert got["steps"] == "3 (n_epochs=None, max_steps=3, steps per epoch=8)"
    assert got["optimizers"] == "optimizer (SGD)"
    assert "ModelSummaryCallback" in got["callbacks"] and "CheckpointCallback" in got["callbacks"]
    assert got["checkpoint"] == str(tmp_path / "ckpt")
    assert "\n  checkpoint             " in text


# ------------------------------------------------------------------------------ multi-process
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """tests/distributed/progress_tools_scenario.py under torchrun with 2 ranks (gloo)."""
    out = tmp_path_factory.mktemp("progress_tools")
    torchrun(SCENARIO, 2, out)
    return {rank: torch.load(out / f"rank{rank}.pt") for rank in (0, 1)}


def test_fsdp_summary_reports_global_sizes(two_ranks: dict[int, dict[str, Any]]) -> None:
    fsdp = two_ranks[0]["fsdp"]
    assert (fsdp["params"], fsdp["trainable"]) == (TOY_PARAMS, TOY_PARAMS)
    assert fsdp["local"] == TOY_PARAMS // 2  # every dim 0 is even: an exact half per rank
    assert fsdp["rows"] == {
        "tok_embeddings": (64 * 32, 64 * 32 // 2, "FSDP(dp_shard_cp=2)"),
        "layers": (TOY_PARAMS - 2 * 64 * 32 - 32, (TOY_PARAMS - 2 * 64 * 32 - 32) // 2,
                   "FSDP(dp_shard_cp=2) (2 FSDP units)"),
        "norm": (32, 16, "FSDP(dp_shard_cp=2)"),
        "output": (32 * 64, 32 * 64 // 2, "FSDP(dp_shard_cp=2)"),
    }
    assert fsdp["trainer"]["world size"] == "2"
    assert fsdp["trainer"]["batch size"] == "8 global, 4 per data-parallel rank (2 ranks)"
    tp = two_ranks[0]["tp"]
    assert tp["params"] == TOY_PARAMS and tp["local"] < TOY_PARAMS
    assert tp["rows"]["tok_embeddings"][2] == "TP(tp=2)"
    assert tp["rows"]["layers"][2] == "TP(tp=2); TP-replicated(tp=2)"  # linears; norms
    assert tp["rows"]["norm"][2] == "TP-replicated(tp=2)"
    # Rank-zero callback: rank 1 neither summarised nor printed.
    assert two_ranks[1]["fsdp"] is None and two_ranks[1]["tp"] is None


def test_tools_run_on_every_rank_and_print_on_rank_zero(
        two_ranks: dict[int, dict[str, Any]]) -> None:
    zero, one = two_ranks[0], two_ranks[1]
    assert [line.split(" |")[0].split(" in ")[0] for line in zero["bar"].splitlines()] == [
        "step 2/4", "step 4/4", "done: 4 steps"]
    assert one["bar"] == ""
    assert zero["bar_summary"]["loss"] == one["bar_summary"]["loss"]  # averaged over ranks
    assert zero["gc"] == one["gc"] == [2, 4]
    assert zero["bench_steps"] == one["bench_steps"] == 3
    for rank in (0, 1):
        (trace,) = two_ranks[rank]["traces"]
        assert Path(trace).name == f"rank{rank}.step2.pt.trace.json"
        assert "ProfilerStep#1" in Path(trace).read_text()


# ------------------------------------------------------------------------------ gc
def test_gc_collects_every_n_steps_only() -> None:
    events: list[tuple[int, int]] = []
    enabled_during: set[bool] = set()
    watching = False

    class Probe(Callback):  # watches from the end of setup (the trainer's own automatic
        def post_setup(self) -> None:  # collections while building models don't count)
            nonlocal watching
            watching = True

        def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
            enabled_during.add(gc.isenabled())

        def post_fit(self) -> None:
            nonlocal watching
            watching = False

    config = toy_config(steps=5, batch=2, accumulation=2,
                        callbacks=[GarbageCollectionCallback(every_n_steps=2), Probe()])
    trainer = ToyTrainer(config)

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and watching:
            events.append((info["generation"], trainer.global_step))

    assert gc.isenabled()
    gc.callbacks.append(record)
    try:
        trainer.fit()
    finally:
        gc.callbacks.remove(record)
    assert enabled_during == {False}
    assert gc.isenabled()
    # From setup's end to fit's: one full collection before training, then after steps 2 and 4
    # (global_step advances right after the hook, so it still reads 1 and 3), none automatic.
    assert events == [(2, 0), (2, 1), (2, 3)]
    callback = config.callbacks["GarbageCollectionCallback"]
    assert callback.collected_at == [2, 4] and len(callback.seconds) == 2


def test_gc_state_is_restored() -> None:
    gc.disable()
    try:
        callback = GarbageCollectionCallback(2, collect_at_start=False)
        ToyTrainer(toy_config(steps=1, batch=2, callbacks=[callback])).fit()
        assert not gc.isenabled()  # it was off before: stays off
    finally:
        gc.enable()

    class Boom(Callback):
        def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
            assert not gc.isenabled()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ToyTrainer(toy_config(steps=2, batch=2, callbacks=[
            GarbageCollectionCallback(1, collect_at_start=False), Boom()])).fit()
    assert gc.isenabled()


# ------------------------------------------------------------------------------ profiler
def test_profiler_writes_a_trace_per_active_window(tmp_path: Path) -> None:
    profiler = ProfilerCallback(wait=1, warmup=1, active=2, output_dir=tmp_path / "prof",
                                record_shapes=True)
    ToyTrainer(toy_config(steps=5, callbacks=[profiler])).fit()
    # Steps 0 wait, 1 warm-up, 2-3 recorded; the window closes at step 4.
    assert profiler.traces == [tmp_path / "prof" / "rank0.step4.pt.trace.json"]
    events = json.loads(profiler.traces[0].read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"ProfilerStep#2", "ProfilerStep#3"} <= names
    assert "ProfilerStep#1" not in names and "ProfilerStep#4" not in names
    assert names & {"aten::mm", "aten::addmm", "aten::matmul"}
    assert any(e.get("args", {}).get("Input Dims") for e in events)  # record_shapes
    assert profiler.profiler is None  # stopped with fit()


def test_profiler_skips_other_ranks_and_flushes_a_cut_window(tmp_path: Path) -> None:
    elsewhere = ProfilerCallback(output_dir=tmp_path / "a", ranks=(1,))
    cut = ProfilerCallback(wait=0, warmup=1, active=10, output_dir=tmp_path / "b")
    config = toy_config(steps=2, callbacks=[elsewhere])
    config.callbacks.add(cut, "cut")
    ToyTrainer(config).fit()
    assert elsewhere.traces == [] and not (tmp_path / "a").exists()
    assert [p.name for p in cut.traces] == ["rank0.step2.pt.trace.json"]


# ------------------------------------------------------------------------------ benchmark
class SleepyTrainer(ToyTrainer):
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        time.sleep(0.02)
        return super().training_step(batch, batch_idx)


def test_benchmark_times_every_step_after_warmup() -> None:
    out = io.StringIO()
    bench = BenchmarkCallback(warmup_steps=2, stream=out)
    SleepyTrainer(toy_config(steps=6, batch=4, accumulation=2, callbacks=[bench],
                             val_every_n_steps=3)).fit()
    assert len(bench.warmup_times) == 2 and len(bench.step_times) == 4
    r = bench.results
    assert r["steps"] == 4
    assert min(bench.step_times) >= 0.04  # two sleepy micro-batches per step
    assert 0.04 <= r["min"] <= r["median"] <= r["p90"] <= r["max"]
    assert r["mean"] == pytest.approx(sum(bench.step_times) / 4)
    assert r["steps_per_second"] == pytest.approx(1 / r["mean"])
    assert r["samples_per_second"] == pytest.approx(8 / r["mean"])  # 4 x 2 per step
    assert r["tokens_per_second"] == pytest.approx(8 * 17 / r["mean"])  # 17 tokens a sample
    assert out.getvalue().startswith("benchmark: 4 steps after 2 warm-up | step time mean ")


def test_benchmark_without_measured_steps_says_why() -> None:
    out = io.StringIO()
    bench = BenchmarkCallback(warmup_steps=5, stream=out, sync_device=False)
    ToyTrainer(toy_config(steps=2, callbacks=[bench])).fit()
    assert bench.results == {}
    assert "no step measured" in out.getvalue() and "lower warmup_steps" in out.getvalue()


def test_percentile_interpolates_like_numpy() -> None:
    values = [0.5, 0.1, 0.4, 0.2, 0.3]
    assert percentile(values, 50) == pytest.approx(0.3)
    assert percentile(values, 90) == pytest.approx(0.46)
    assert percentile(values, 100) == 0.5 and percentile([7.0], 90) == 7.0
