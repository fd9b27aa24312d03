"""Training utilities: early stopping, EMA of weights, best-model saving, per-group learning rates
(one process), and early stopping + EMA under 2-rank FSDP2 (one torchrun launch).

The LR finder has its own file, tests/test_lr_finder.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from dream_trainer.callbacks import Callback, CheckpointCallback
from dream_trainer.callbacks.best_model import (
    BestModelCallback,
    best_checkpoint,
    read_best_record,
)
from dream_trainer.callbacks.early_stopping import EarlyStoppingCallback
from dream_trainer.callbacks.ema import EMACallback
from dream_trainer.checkpoint.export import export_checkpoint
from dream_trainer.configs import CheckpointParameters, ConfigError
from dream_trainer.utils.param_groups import param_groups
from safetensors.torch import load_file
from torch import nn
from torchrun import torchrun
from toy import ToyTrainer, run, toy_config

# --------------------------------------------------------------------------- scripted validation
SCRIPT = (5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.0, 1.0, 0.5, 0.1)
"""Validation loss of epoch i. With patience 3 the best is 3.0 (epoch 2); epochs 3, 4 and 5 do
not beat it, so training stops after epoch 5's validation: 6 epochs of 1 step each."""


class Scripted(ToyTrainer):
    """Validation returns ``script[current_epoch]`` (times ``sign``); training is the toy's."""

    script = SCRIPT
    sign = 1.0

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return {"val_loss": torch.tensor(self.sign * self.script[self.current_epoch])}


def epochs_config(n_epochs: int = 10, callbacks: list[Callback] | None = None, **kw: Any):
    """One optimizer step per epoch, validation (one batch) at the end of each epoch."""
    return toy_config(steps=None, n_epochs=n_epochs, train_steps_per_epoch=1,
                      val_steps_per_epoch=1, callbacks=callbacks, **kw)


def checkpoints(root: Path, **params: Any) -> CheckpointCallback:
    return CheckpointCallback(CheckpointParameters(root_dir=str(root), **params))


# --------------------------------------------------------------------------- early stopping
@pytest.mark.parametrize("mode", ["min", "max"])
def test_early_stopping_stops_after_patience_evaluations_without_improvement(mode) -> None:
    stopper = EarlyStoppingCallback(monitor="val_loss", patience=3, mode=mode)
    trainer = Scripted(epochs_config(callbacks=[stopper]))
    trainer.sign = 1.0 if mode == "min" else -1.0  # "max" sees the mirrored sequence
    trainer.fit()
    assert (trainer.current_epoch, trainer.global_step) == (6, 6)
    assert stopper.best == trainer.sign * 3.0 and stopper.best_step == 3
    assert stopper.wait == 3 and stopper.stopped_step == 6
    assert trainer.stop_reason is not None and "val_loss" in trainer.stop_reason


def test_early_stopping_threshold_is_the_minimum_improvement() -> None:
    class Slow(Scripted):
        script = (5.0, 4.0, 3.9, 3.8, 3.76, 1.0, 0.5, 0.4, 0.3, 0.2)

    # Improvements of 0.1 count with min_delta=0 (no stop in 10 epochs)...
    free = Slow(epochs_config(callbacks=[EarlyStoppingCallback(patience=3)]))
    free.fit()
    assert free.current_epoch == 10 and free.stop_reason is None
    # ...but not with threshold=0.25: 3.9, 3.8, 3.76 all fail to beat 4.0 - 0.25.
    strict = Slow(epochs_config(callbacks=[EarlyStoppingCallback(patience=3, threshold=0.25)]))
    strict.fit()
    assert strict.current_epoch == 5


def test_early_stopping_on_training_epoch_results() -> None:
    """check_on="train_epoch" watches the epoch's mean training results: no epoch improves the
    loss by 100, so after the first sets the best, patience 2 ends training after epoch 2."""
    stopper = EarlyStoppingCallback(monitor="loss", patience=2, min_delta=100.0,
                                    check_on="train_epoch")
    trainer = ToyTrainer(epochs_config(callbacks=[stopper]))
    trainer.fit()
    assert (trainer.current_epoch, stopper.best_step, stopper.wait) == (3, 1, 2)


def test_request_stop_ends_at_a_step_boundary_mid_epoch() -> None:
    """Validation every step under accumulation 2: the stop lands right after the step whose
    validation exhausted patience, without running another micro-batch."""

    class PerValidation(ToyTrainer):
        calls = 0

        def validation_step(self, batch, batch_idx):
            PerValidation.calls += 1
            return {"val_loss": torch.tensor([3.0, 2.0, 2.5, 2.4, 9.0, 1.0][self.calls - 1])}

    stopper = EarlyStoppingCallback(patience=2)
    trainer = PerValidation(toy_config(steps=None, n_epochs=1, batch=4, accumulation=2,
                                       val_every_n_steps=1, val_steps_per_epoch=1,
                                       callbacks=[stopper]))
    trainer.fit()
    assert PerValidation.calls == 4
    assert (trainer.global_step, trainer.local_batches) == (4, 8)
    assert trainer.current_epoch == 0 and trainer.epoch_batches == 8  # the epoch was cut short


def test_early_stopping_state_survives_a_resume(tmp_path) -> None:
    """Stopped by n_epochs after epoch 3 (best 3.0, wait 1), the resumed run stops after epoch 5,
    as the uninterrupted run does: without the saved counters it would wait until epoch 6."""
    first = EarlyStoppingCallback(patience=3)
    Scripted(epochs_config(4, [first, checkpoints(tmp_path)])).fit()
    assert (first.best, first.wait) == (3.0, 1)

    class Probe(Callback):
        def pre_epoch(self) -> None:
            self.at_start = self.at_start if hasattr(self, "at_start") else (
                self.trainer.global_step, resumed.best, resumed.wait)

    resumed, probe = EarlyStoppingCallback(patience=3), Probe()
    trainer = Scripted(epochs_config(10, [resumed, probe, checkpoints(tmp_path)]))
    trainer.fit()
    assert probe.at_start == (4, 3.0, 1)
    assert (trainer.current_epoch, resumed.stopped_step) == (6, 6)

    # Resuming the run that stopped: it stays stopped (its last checkpoint is at step 6).
    again = Scripted(epochs_config(10, [EarlyStoppingCallback(patience=3), checkpoints(tmp_path)]))
    again.fit()
    assert again.global_step == 6 and again.stop_reason is not None


def test_early_stopping_errors_name_the_field_value_and_fix() -> None:
    with pytest.raises(ConfigError, match=r"EarlyStoppingCallback.mode='lowest'.*Fix: pass one"):
        EarlyStoppingCallback(mode="lowest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"EarlyStoppingCallback.patience=-1: must be >= 0"):
        EarlyStoppingCallback(patience=-1)
    with pytest.raises(ConfigError, match=r"min_delta=-0.1"):
        EarlyStoppingCallback(min_delta=-0.1)
    with pytest.raises(ConfigError, match="only one of min_delta and threshold"):
        EarlyStoppingCallback(min_delta=0.1, threshold=0.2)
    stopper = EarlyStoppingCallback(monitor="val_acc")
    with pytest.raises(ConfigError, match=r"monitor='val_acc': is not among the validation "
                                          r"results \['val_loss'\].*Fix: pass one of those keys"):
        Scripted(epochs_config(2, [stopper])).fit()


# --------------------------------------------------------------------------- EMA
class ParamRecorder(Callback):
    """The model's parameters after init and after every optimizer step."""

    def __init__(self) -> None:
        self.after: list[dict[str, torch.Tensor]] = []

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trainer.model.named_parameters()}

    def post_setup(self) -> None:
        self.after.append(self.snapshot())

    def post_train_step(self, result, batch_idx) -> None:
        if not self.trainer.is_accumulating_gradients:
            self.after.append(self.snapshot())


def test_ema_equals_the_hand_computed_average() -> None:
    """decay 0.5, start_step 1, every 2 steps, 5 steps: the average copies the weights after
    step 1, then averages after steps 3 and 5."""
    decay = 0.5
    ema, weights = EMACallback(decay=decay, update_every_n_steps=2, start_step=1), ParamRecorder()
    run(toy_config(steps=5, callbacks=[ema, weights]))
    p = weights.after  # p[k]: weights after step k (p[0]: after init)
    assert ema.num_updates == 2
    for name in p[0]:
        want = p[1][name]
        want = decay * want + (1 - decay) * p[3][name]
        want = decay * want + (1 - decay) * p[5][name]
        torch.testing.assert_close(ema.shadow["model"][name], want, rtol=1e-6, atol=1e-7)
        assert not torch.equal(want, p[5][name])  # the average differs from the weights


def test_ema_swap_round_trip_restores_training_weights_exactly() -> None:
    """use_for_validation swaps the average in for each validation: validation sees it, and
    training continues bit-for-bit as without EMA."""
    seen: list[bool] = []

    class ValidatesAverage(Callback):
        def post_validation_epoch(self, result) -> None:  # runs before the EMA swaps back
            seen.append(all(torch.equal(p, ema.shadow["model"][n])
                            for n, p in self.trainer.model.named_parameters()))

    ema = EMACallback(decay=0.9, use_for_validation=True)
    common = {"val_every_n_steps": 2, "val_steps_per_epoch": 1}
    with_ema = run(toy_config(steps=4, callbacks=[ValidatesAverage(), ema], **common))
    without = run(toy_config(steps=4, **common))
    assert seen == [True, True]
    assert with_ema["losses"] == without["losses"]
    for name, value in without["params"].items():
        assert torch.equal(with_ema["params"][name], value), name
    assert with_ema["val"]["val_loss"] != without["val"]["val_loss"]  # the average was validated

    trainer = ToyTrainer(toy_config(steps=2, callbacks=[EMACallback(decay=0.9)]))
    trainer.fit()
    callback = trainer.callbacks["EMACallback"]
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with callback.average_weights():
        for n, p in trainer.model.named_parameters():
            assert torch.equal(p, callback.shadow["model"][n])
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, before[n]), n
    with pytest.raises(RuntimeError, match="without swap_in"):
        callback.swap_out()


def test_ema_is_checkpointed_and_resumes_the_same_average(tmp_path) -> None:
    straight = EMACallback(decay=0.8)
    run(toy_config(steps=4, callbacks=[straight]))
    run(toy_config(steps=2, callbacks=[EMACallback(decay=0.8),
                                       checkpoints(tmp_path, checkpoint_every_n_steps=2)]))
    resumed = EMACallback(decay=0.8)
    run(toy_config(steps=4, callbacks=[resumed, checkpoints(tmp_path, checkpoint_every_n_steps=2)]))
    assert resumed.num_updates == straight.num_updates == 4
    for name, value in straight.shadow["model"].items():
        assert torch.equal(resumed.shadow["model"][name], value), name


def test_ema_bad_input() -> None:
    with pytest.raises(ConfigError, match=r"EMACallback.decay=1.5: must be in \[0, 1\]"):
        EMACallback(decay=1.5)
    with pytest.raises(ConfigError, match="update_every_n_steps=0"):
        EMACallback(update_every_n_steps=0)
    with pytest.raises(ConfigError, match=r"EMACallback.models=\['encoder'\].*\['model'\]"):
        run(toy_config(steps=1, callbacks=[EMACallback(models=["encoder"])]))


# --------------------------------------------------------------------------- best model
class WeightsAtValidation(Callback):
    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def post_validation_epoch(self, result) -> None:
        self.weights[self.trainer.global_step] = {
            n: p.detach().clone() for n, p in self.trainer.model.named_parameters()}


def test_best_model_holds_the_weights_of_the_best_validation(tmp_path) -> None:
    class Bumpy(Scripted):
        script = (3.0, 1.0, 2.0, 0.5, 4.0)

    best, seen = BestModelCallback(str(tmp_path / "best")), WeightsAtValidation()
    ckpt = checkpoints(tmp_path / "ckpt", keep_top_k=1, monitor="val_loss", mode="min")
    Bumpy(epochs_config(5, [best, seen, ckpt])).fit()
    record = read_best_record(str(tmp_path / "best"))
    assert record is not None
    assert (record["value"], record["step"], record["epoch"]) == (0.5, 4, 3)
    saved = load_file(tmp_path / "best" / "model.safetensors")
    assert saved.keys() == seen.weights[4].keys()
    for name, value in seen.weights[4].items():
        assert torch.equal(saved[name], value), name
    assert not torch.equal(saved["output.weight"], seen.weights[5]["output.weight"])

    # The resumable path: checkpoint retention by metric keeps the best committed checkpoint
    # (the one saved after the 0.5 validation, at step 4) and the newest; best_checkpoint finds it.
    url = best_checkpoint(str(tmp_path / "ckpt"), "val_loss", "min")
    assert url is not None and url.endswith("step_000000004")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "step_000000004", "step_000000005"]
    export_checkpoint(url, str(tmp_path / "exported.safetensors"))
    exported = load_file(tmp_path / "exported.safetensors")
    for name, value in saved.items():
        assert torch.equal(exported[name], value), name


def test_best_model_saves_the_ema_weights_it_validated(tmp_path) -> None:
    ema = EMACallback(decay=0.5, use_for_validation=True)
    # Listed after the EMA, whose post_validation_epoch has already swapped the weights back.
    best = BestModelCallback(str(tmp_path), monitor="val_loss")
    run(epochs_config(1, [ema, best]))
    saved = load_file(tmp_path / "model.safetensors")
    for name, value in ema.shadow["model"].items():
        assert torch.equal(saved[name], value), name


def test_best_model_bad_input() -> None:
    with pytest.raises(ConfigError, match=r"BestModelCallback.mode='best'"):
        BestModelCallback("out", mode="best")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"BestModelCallback.dirpath=''"):
        BestModelCallback("")


# --------------------------------------------------------------------------- param groups
class Adapter(nn.Module):
    """Seed 004's parts: a memory module, LoRA adapters, a base model (one frozen piece)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.memory = nn.ModuleDict({"key": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
        self.attn = nn.Linear(4, 4)
        self.lora_A = nn.Linear(4, 2, bias=False)
        self.lora_B = nn.Linear(2, 4, bias=False)
        self.head = nn.Linear(4, 10)
        self.embed.weight.requires_grad_(False)


def test_param_groups_are_disjoint_complete_and_named() -> None:
    model = Adapter()
    groups = param_groups(model, {"memory": (r"^memory\.", 2e-4), "lora": (r"lora_", 1e-4),
                                  "base": 1e-5}, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    assert [g["name"] for g in groups] == ["memory", "lora", "base"]
    assert by_name["memory"]["param_names"] == ["memory.key.weight", "memory.key.bias",
                                                "memory.norm.weight", "memory.norm.bias"]
    assert by_name["lora"]["param_names"] == ["lora_A.weight", "lora_B.weight"]
    assert by_name["base"]["param_names"] == ["attn.weight", "attn.bias", "head.weight",
                                              "head.bias"]  # unmatched -> default; frozen: out
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)  # disjoint and complete
    assert {g["weight_decay"] for g in groups} == {0.01}

    # First match wins: "norm" is claimed by "memory" before a later group could take it.
    split = param_groups(model, {"memory": (r"^memory\.", 2e-4), "lora": ("lora_", 1e-4),
                                 "base": 1e-5}, weight_decay=0.1, no_weight_decay=r"bias|norm")
    assert [(g["name"], g["weight_decay"], len(g["params"])) for g in split] == [
        ("memory", 0.1, 1), ("memory.no_decay", 0.0, 3), ("lora", 0.1, 2),
        ("base", 0.1, 2), ("base.no_decay", 0.0, 2)]
    predicate = param_groups(model, {"heads": (lambda n, p: p.ndim == 2 and "head" in n, 1.0),
                                     "rest": 0.1})
    assert predicate[0]["param_names"] == ["head.weight"]


def test_param_groups_drive_the_optimizer_and_schedulers_scale_each() -> None:
    model = Adapter()
    groups = param_groups(model, {"memory": (r"^memory\.", 2e-4), "lora": (r"lora_", 1e-4),
                                  "base": 1e-5}, no_weight_decay="norm|bias", weight_decay=0.01,
                          )
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95))
    want = {"memory": 2e-4, "memory.no_decay": 2e-4, "lora": 1e-4, "base": 1e-5,
            "base.no_decay": 1e-5}
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == want
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    for _ in range(3):
        model.head(model.attn(torch.ones(1, 4))).sum().backward()
        optimizer.step()
        scheduler.step()
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(want[group["name"]] * 0.125)
    assert [g["name"] for g in optimizer.state_dict()["param_groups"]] == list(want)


def test_param_groups_in_a_trainer_checkpoint_and_resume(tmp_path) -> None:
    class Grouped(ToyTrainer):
        def configure_optimizers(self) -> None:
            self.optimizer = torch.optim.SGD(param_groups(self.model, {
                "attention": (r"\.attention\.", 0.2), "base": 0.1}), momentum=0.9)

    uninterrupted = Grouped(toy_config(steps=4))
    uninterrupted.fit()
    Grouped(toy_config(steps=2, callbacks=[checkpoints(tmp_path, checkpoint_every_n_steps=2)])).fit()
    resumed = Grouped(toy_config(steps=4, callbacks=[checkpoints(tmp_path,
                                                                 checkpoint_every_n_steps=2)]))
    resumed.fit()
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [0.2, 0.1]
    for (name, a), b in zip(uninterrupted.model.named_parameters(), resumed.model.parameters(),
                            strict=True):
        assert torch.equal(a, b), name


def test_param_groups_errors_explain() -> None:
    model = Adapter()
    with pytest.raises(ConfigError, match=r"param_groups\['memroy'\].*matches no trainable "
                                          r"parameter.*memory\.key\.weight.*Fix: fix the pattern"):
        param_groups(model, {"memroy": (r"^memroy\.", 1e-3), "base": 1e-5})
    with pytest.raises(ConfigError, match=r"6 parameter\(s\) match no group.*'attn.weight'.*"
                                          r"Fix: add a default group"):
        param_groups(model, {"memory": (r"^memory\.", 1e-3)})
    with pytest.raises(ConfigError, match=r"second default group \(after 'base'\)"):
        param_groups(model, {"base": 1e-5, "other": 1e-4})
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        param_groups(model, {"bad": ("(", 1e-3), "base": 1e-5})
    with pytest.raises(ConfigError, match=r"param_groups\['lora'\].lr=-1"):
        param_groups(model, {"lora": ("lora_", -1), "base": 1e-5})


# --------------------------------------------------------------------------- 2 ranks, FSDP2
SCENARIOS = Path(__file__).parent / "distributed" / "training_utilities.py"


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("training_utilities")
    torchrun(SCENARIOS, 2, out)
    return torch.load(out / "result.pt")


def test_fsdp_ranks_stop_together_on_all_reduced_validation(fsdp_results) -> None:
    """Each rank's local validation values differ; the all-reduced means follow SCRIPT, so both
    ranks stop after epoch 5, like the single-process run."""
    for rank in fsdp_results["ranks"]:
        assert (rank["current_epoch"], rank["global_step"], rank["wait"]) == (6, 6, 3)


def test_fsdp_ema_keeps_dtensor_shards_and_matches_one_process(fsdp_results) -> None:
    assert fsdp_results["shadow_is_dtensor"]
    single = EMACallback(decay=0.5)
    run(toy_config(steps=4, callbacks=[single]))
    got = fsdp_results["ema"]
    assert got.keys() == single.shadow["model"].keys()
    for name, value in single.shadow["model"].items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5)
    assert fsdp_results["swap_exact"]
    for name, value in got.items():  # saved by DCP as DTensors, resumed: the same average
        assert torch.equal(fsdp_results["resumed_ema"][name], value), name


def test_fsdp_lr_finder_agrees_across_ranks_and_restores_shards(fsdp_results) -> None:
    first, second = fsdp_results["lr_finder"]
    assert first["losses"] == second["losses"] and len(first["losses"]) >= 2
    assert first["suggestion"] == second["suggestion"]
    assert first["restored"] and second["restored"]
