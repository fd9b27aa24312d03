"""The training loop, lifecycle and callbacks in one process."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from dream_trainer.callbacks import Callback, CallbackCollection, RankZeroCallback
from dream_trainer.configs import ConfigError, DeviceParameters
from dream_trainer.trainer.base import validation_points
from dream_trainer.trainer.mixins import SetupMixin
from toy import RandomTokens, ToyTrainer, run, toy_config


class Recorder(Callback):
    """Records every hook call by name."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        from dream_trainer.callbacks import HOOKS

        if name in HOOKS:
            calls = object.__getattribute__(self, "calls")
            return lambda *args: calls.append(name)
        return object.__getattribute__(self, name)


class LifecycleTrainer(ToyTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[str] = []
        super().__init__(*args, **kwargs)

    def configure_models(self) -> None:
        super().configure_models()
        self.events.append(f"configure_models:{self.model.output.weight.device.type}")

    def post_configure_models(self) -> None:
        self.events.append("post_configure_models")

    def apply_fully_shard(self, fsdp_config: dict[str, Any]) -> None:
        self.events.append("apply_fully_shard")

    def init_weights(self) -> None:
        self.events.append(f"init_weights:{self.model.output.weight.device.type}")
        super().init_weights()

    def configure_optimizers(self) -> None:
        self.events.append("configure_optimizers")
        super().configure_optimizers()

    def configure_schedulers(self) -> None:
        self.events.append("configure_schedulers")
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)

    def configure_dataloaders(self):
        self.events.append("configure_dataloaders")
        return super().configure_dataloaders()


def test_setup_runs_in_the_documented_order() -> None:
    trainer = LifecycleTrainer(toy_config(steps=1))
    trainer.fit()
    assert trainer.events == [
        "configure_models:meta", "post_configure_models", "init_weights:cpu",
        "configure_optimizers", "configure_schedulers", "configure_dataloaders",
    ]
    assert list(trainer.named_models()) == ["model"]
    assert list(trainer.named_optimizers()) == ["optimizer"]
    assert list(trainer.named_schedulers()) == ["scheduler"]
    assert trainer.get_module("model.layers.1.attention") is trainer.model.layers["1"].attention
    # The scheduler bound to the optimizer stepped once per optimizer step.
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.config.lr * 0.5)


def test_callback_hooks_fire_in_order() -> None:
    recorder = Recorder()
    config = toy_config(steps=2, accumulation=2, batch=4, callbacks=[recorder],
                        val_every_n_steps=2, val_steps_per_epoch=1, num_sanity_val_steps=1)
    ToyTrainer(config).fit()
    validation = ["pre_validation_epoch", "pre_validation_step", "post_validation_step",
                  "post_validation_epoch"]
    optimizer = ["pre_optimizer_step", "post_optimizer_step", "pre_optimizer_zero_grad",
                 "post_optimizer_zero_grad"]
    accumulate = ["pre_train_step", "post_train_step"]
    step = ["pre_train_step", *optimizer, "post_train_step"]
    assert recorder.calls == [
        "pre_configure", "post_configure", "pre_setup", "post_setup", "pre_fit",
        *validation,  # sanity check
        "pre_epoch", "pre_train_epoch",
        *accumulate, *step, *accumulate, *step, *validation,
        "post_train_epoch", "post_epoch", "post_fit",
    ]


def test_on_interrupt_runs_when_fit_fails() -> None:
    recorder = Recorder()

    class Broken(ToyTrainer):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Broken(toy_config(callbacks=[recorder])).fit()
    assert recorder.calls[-2:] == ["pre_train_step", "on_interrupt"]


def test_epochs_and_steps_limits() -> None:
    # 64 samples / batch 8 = 8 steps per epoch, capped at 3 by train_steps_per_epoch.
    result = ToyTrainer(toy_config(steps=None, n_epochs=2, train_steps_per_epoch=3))
    result.fit()
    assert (result.global_step, result.current_epoch) == (6, 2)
    # max_steps ends training mid-epoch: that epoch is not complete, a resume continues it.
    capped = ToyTrainer(toy_config(steps=5, n_epochs=3))
    capped.fit()
    assert (capped.global_step, capped.current_epoch, capped.epoch_batches) == (5, 0, 5)
    # n_epochs=None: epochs continue until max_steps (20 = 2 full epochs of 8, then 4).
    long = ToyTrainer(toy_config(steps=20, n_epochs=None))
    long.fit()
    assert (long.global_step, long.current_epoch, long.epoch_batches) == (20, 2, 4)


def test_validation_points() -> None:
    assert validation_points(10, 1.0) == {10}
    assert validation_points(10, 0.25) == {2, 5, 8, 10}
    assert validation_points(10, 0.5) == {5, 10}
    assert validation_points(3, 0.25) == {1, 2, 3}


class ValidationCounter(Callback):
    def __init__(self) -> None:
        self.at: list[tuple[int, bool]] = []

    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        assert "val_loss" in result
        self.at.append((self.trainer.global_step, self.trainer.sanity_checking))


def test_validation_cadence_fraction_of_epoch() -> None:
    counter = ValidationCounter()
    ToyTrainer(toy_config(steps=None, n_epochs=1, val_frequency=0.5, num_sanity_val_steps=2,
                          callbacks=[counter])).fit()
    assert counter.at == [(0, True), (4, False), (8, False)]


def test_validation_cadence_every_n_steps() -> None:
    counter = ValidationCounter()
    trainer = ToyTrainer(toy_config(steps=6, val_every_n_steps=3, callbacks=[counter]))
    trainer.fit()
    assert counter.at == [(3, False), (6, False)]
    assert set(trainer.last_validation_result) == {"val_loss"}


def test_gradient_clipping_bounds_the_update() -> None:
    clipped = run(toy_config(steps=1, clip=1e-3))
    free = run(toy_config(steps=1, clip=None))
    start = run(toy_config(steps=1, clip=1e-3, lr=0.0))["params"]
    moved = lambda r: torch.sqrt(sum(((r["params"][k] - start[k]) ** 2).sum() for k in start))
    # SGD step = lr * clipped grad, so the update norm is lr * max_norm.
    assert moved(clipped) == pytest.approx(0.5 * 1e-3, rel=1e-3)
    assert moved(free) > 100 * moved(clipped)


def test_step_returns_the_unclipped_global_norm() -> None:
    norms = []

    class Norms(Callback):
        def post_train_step(self, result, batch_idx):
            norms.append(result["grad_norm"])

    run(toy_config(steps=1, clip=1e-3, callbacks=[Norms()]))
    assert norms[0] > 1e-3


def test_state_dict_round_trip_resumes_exactly() -> None:
    """Save after 2 steps, train 2 more; a fresh trainer loaded from the save trains the same."""
    first = ToyTrainer(toy_config(steps=2, n_epochs=None))
    first.fit()
    saved = copy.deepcopy(first.state_dict())
    assert saved["trainer"]["global_step"] == 2
    first.config.training_parameters.max_steps = 4
    first._fit_loop()
    resumed = ToyTrainer(toy_config(steps=4, n_epochs=None))
    resumed.configure()
    resumed.setup()
    resumed.load_state_dict(saved)
    assert resumed.global_step == 2
    resumed._fit_loop()
    for (name, a), (_, b) in zip(first.model.named_parameters(),
                                 resumed.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_batches_are_global_and_loaders_must_match() -> None:
    class WrongBatch(ToyTrainer):
        def configure_dataloaders(self):
            data = RandomTokens()
            return DataLoader(data, batch_size=self.config.training_parameters.train_batch_size,
                              sampler=self.get_train_sampler(data)), None

    trainer = WrongBatch(toy_config(batch=8))
    assert trainer.local_batch_size("train") == 8  # one rank: local == global
    trainer.fit()  # consistent with one rank
    # As seen under 2-way data parallelism, the same loader would load twice the global batch.
    trainer.world.dims = DeviceParameters.DDP().resolve(2)
    with pytest.raises(ConfigError, match=r'local_batch_size\("train"\)'):
        trainer._setup_dataloaders()


def test_samplers_partition_the_data_over_dp_ranks() -> None:
    trainer = ToyTrainer(toy_config())
    dataset = list(range(10))
    seen = []
    trainer.world.dims = DeviceParameters.DDP().resolve(3)  # as seen with 3 dp ranks
    for rank in range(3):
        sampler = trainer.get_train_sampler(dataset)
        sampler.rank = rank  # what world.dp_rank is on that rank
        sampler.set_epoch(1)
        seen.append(list(sampler))
    flat = sorted(i for part in seen for i in part)
    assert len(flat) == len(set(flat)) == 9  # disjoint; the uneven tail (1 sample) is dropped
    assert all(len(part) == 3 for part in seen)


class NeedsSetup(Callback[SetupMixin]):
    pass


class NotATrainerMixin:
    pass


class NeedsOther(Callback[NotATrainerMixin]):
    pass


def test_callback_dependencies_are_checked() -> None:
    ToyTrainer(toy_config(callbacks=[NeedsSetup()]))
    with pytest.raises(TypeError, match="NotATrainerMixin"):
        ToyTrainer(toy_config(callbacks=[NeedsOther()]))


def test_callback_collection() -> None:
    collection = CallbackCollection([NeedsSetup(), None])
    assert list(collection) == ["NeedsSetup"]
    with pytest.raises(ValueError, match="two callbacks"):
        collection.add(NeedsSetup())
    with pytest.raises(TypeError, match="not a Callback"):
        CallbackCollection([object()])  # type: ignore[list-item]


def test_rank_zero_callbacks_skip_other_ranks() -> None:
    class Counting(RankZeroCallback):
        calls = 0

        def pre_fit(self) -> None:
            Counting.calls += 1

    trainer = ToyTrainer(toy_config(steps=1, callbacks=[Counting()]))
    trainer.world.rank = 1  # as seen on another rank
    trainer.callbacks.pre_fit()
    trainer.world.rank = 0
    trainer.callbacks.pre_fit()
    assert Counting.calls == 1


def test_missing_user_hooks_explain_themselves() -> None:
    from dream_trainer import DreamTrainer, DreamTrainerConfig

    with pytest.raises(TypeError, match="configure_models"):
        DreamTrainer(DreamTrainerConfig()).fit()


def test_training_is_deterministic_given_the_seed() -> None:
    """Same config twice: bitwise-equal losses and weights (model init comes from the seed)."""
    from dream_trainer.data import ByteTextDataset

    class SeededInit(ToyTrainer):
        def init_weights(self) -> None:  # random init from the trainer's seed, not a fixed file
            self.model.init_weights()

    a, b = SeededInit(toy_config(steps=3)), SeededInit(toy_config(steps=3))
    a.fit()
    b.fit()
    for (name, x), (_, y) in zip(a.model.named_parameters(), b.model.named_parameters(),
                                 strict=True):
        assert torch.equal(x, y), name
    other = SeededInit(toy_config(steps=3))
    other.config.seed = 7
    other = SeededInit(other.config)
    other.fit()
    assert not torch.equal(other.model.output.weight, a.model.output.weight)
    assert len(ByteTextDataset(b"x" * 100, 9)) == 9  # windows of 10 over the 95-byte train split


def test_bf16_autocast_on_a_single_device() -> None:
    dtypes = []

    class Probe(ToyTrainer):
        def lm_loss(self, logits, target):
            dtypes.append(logits.dtype)
            return super().lm_loss(logits, target)

    result = Probe(toy_config(DeviceParameters.SINGLE_DEVICE(param_dtype=torch.bfloat16),
                              steps=2))
    result.fit()
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
