"""The learning-rate range test on linear regression, where the good learning rates are known.

Inputs x ~ N(0, I) in 8 dimensions plus a bias: E[[x, 1][x, 1]^T] = I, so the Hessian of the mean
squared error is 2I and one (full-batch) SGD step multiplies the error by |1 - 2 lr|:

* lr >= 1 does not converge (|1 - 2 lr| >= 1): the loss cannot fall fastest there;
* lr <= 5e-3 barely moves: the sweep below it (1e-4 -> 5e-3 at 20 steps per decade, a geometric
  series summing to ~0.05) shrinks the loss by at most exp(-4 * 0.05) ~ 0.8 altogether.

So the steepest fall of the loss, the suggestion, must lie in (5e-3, 1).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dream_trainer import DreamTrainer, DreamTrainerConfig
from dream_trainer.callbacks import CallbackCollection
from dream_trainer.callbacks.lr_finder import LRFinderCallback, find_learning_rate, suggest_lr
from dream_trainer.configs import ConfigError, TrainingParameters
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

DIM = 8


@dataclass(kw_only=True)
class RegressionConfig(DreamTrainerConfig):
    lr: float = 0.1
    optimizer: str = "sgd"


class LinearRegression(DreamTrainer):
    config: RegressionConfig

    def configure_models(self) -> None:
        self.model = nn.Linear(DIM, 1)

    def init_weights(self) -> None:
        nn.init.zeros_(self.model.weight)
        nn.init.zeros_(self.model.bias)

    def configure_optimizers(self) -> None:
        if self.config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr)
        else:
            self.optimizer = torch.optim.AdamW([
                {"params": [self.model.weight], "lr": self.config.lr},
                {"params": [self.model.bias], "lr": self.config.lr * 10}])

    def configure_schedulers(self) -> None:
        if self.config.optimizer != "sgd":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                               lambda s: 1 / (1 + s))

    def configure_dataloaders(self) -> tuple[DataLoader, None]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4096, DIM, generator=g)
        y = x @ torch.randn(DIM, 1, generator=g) + 3.0 + 0.01 * torch.randn(4096, 1, generator=g)
        data = TensorDataset(x, y)
        return DataLoader(data, batch_size=self.local_batch_size("train"),
                          sampler=self.get_train_sampler(data)), None

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        x, y = batch
        loss = F.mse_loss(self.model(x), y)
        self.backward(loss)
        if not self.is_accumulating_gradients:
            self.step(self.model, self.optimizer)
        return {"loss": loss}


def regression(optimizer: str = "sgd", lr: float = 0.1, callbacks: list[Any] | None = None,
               **training: Any) -> LinearRegression:
    return LinearRegression(RegressionConfig(
        lr=lr, optimizer=optimizer, callbacks=CallbackCollection(callbacks or []),
        training_parameters=TrainingParameters(train_batch_size=64, **training)))


def test_suggestion_lies_in_the_steep_descent_region_and_the_plot_is_written(tmp_path) -> None:
    trainer = regression()
    result = find_learning_rate(trainer, min_lr=1e-4, max_lr=10.0, num_steps=100,
                                plot_path=str(tmp_path / "lr.png"))
    assert result.suggestion is not None
    assert 5e-3 < result.suggestion < 1.0, result.suggestion
    i = result.suggestion_index
    assert result.smoothed[i + 1] < result.smoothed[i - 1]  # the loss is falling there
    assert result.diverged and result.lrs[-1] > 1.0  # beyond the stability bound it blew up
    assert len(result.lrs) < 100
    png = (tmp_path / "lr.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert result.plot_path == str(tmp_path / "lr.png")


def test_model_optimizer_scheduler_counters_and_rng_are_restored_exactly() -> None:
    """After 3 real steps (AdamW moments, a scheduler under way, two groups at a 1:10 ratio) the
    range test leaves every bit as it was."""
    trainer = regression("adamw", lr=1e-2, max_steps=3, n_epochs=None)
    trainer.fit()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    optimizer = copy.deepcopy(trainer.optimizer.state_dict())
    scheduler = copy.deepcopy(trainer.scheduler.state_dict())
    counters = (trainer.global_step, trainer.local_batches, trainer.epoch_batches)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())

    seen_lrs: list[tuple[float, float]] = []
    original = trainer.training_step
    trainer.training_step = lambda batch, idx: (  # type: ignore[method-assign]
        seen_lrs.append(tuple(g["lr"] for g in trainer.optimizer.param_groups)),
        original(batch, idx))[1]
    result = find_learning_rate(trainer, min_lr=1e-5, max_lr=1.0, num_steps=20)
    del trainer.training_step
    assert len(result.lrs) == len(seen_lrs) >= 2
    for (weight_lr, bias_lr), lr in zip(seen_lrs, result.lrs, strict=False):
        assert weight_lr == pytest.approx(lr) and bias_lr == pytest.approx(10 * lr)

    for name, value in trainer.model.named_parameters():
        assert torch.equal(value, params[name]), name
        assert value.grad is None
    after = trainer.optimizer.state_dict()
    assert after["param_groups"] == optimizer["param_groups"]
    for key, state in optimizer["state"].items():
        for field, value in state.items():
            assert torch.equal(after["state"][key][field], value), (key, field)
    assert trainer.scheduler.state_dict() == scheduler
    assert (trainer.global_step, trainer.local_batches, trainer.epoch_batches) == counters
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])


def test_callback_trains_with_the_suggestion_as_if_configured_with_it(tmp_path) -> None:
    """The finder leaves no trace but the learning rate: training afterwards is bitwise the run
    configured with the suggested learning rate from the start."""
    finder = LRFinderCallback(min_lr=1e-4, max_lr=10.0, num_steps=60,
                              plot_path=str(tmp_path / "lr.png"))
    found = regression(max_steps=5, n_epochs=None, callbacks=[finder])
    found.fit()
    assert finder.result is not None and finder.suggested_lr == finder.result.suggestion
    assert found.optimizer.param_groups[0]["lr"] == finder.suggested_lr
    direct = regression(lr=finder.suggested_lr, max_steps=5, n_epochs=None)
    direct.fit()
    for (name, a), b in zip(found.model.named_parameters(), direct.model.parameters(),
                            strict=True):
        assert torch.equal(a, b), name
    assert (tmp_path / "lr.png").exists()
    assert finder.state_dict() == {"suggested_lr": finder.suggested_lr}


def test_suggestion_rule_and_bad_input() -> None:
    lrs = [10 ** (k / 10) for k in range(-40, 1)]
    # A loss that falls fastest at lr = 1e-2 (a logistic step in log10 lr centred there).
    smoothed = [1 / (1 + np.exp(4 * (np.log10(lr) + 2))) for lr in lrs]
    assert lrs[suggest_lr(lrs, smoothed)] == pytest.approx(1e-2)
    assert suggest_lr(lrs, [1.0] * len(lrs)) is None  # never falls: no suggestion
    assert suggest_lr(lrs[:3], smoothed[:3]) is None  # too few points
    trainer = regression()
    with pytest.raises(ConfigError, match=r"min_lr=1.0: must be > 0 and below max_lr=0.1"):
        find_learning_rate(trainer, min_lr=1.0, max_lr=0.1)
    with pytest.raises(ConfigError, match=r"num_steps=1: must be >= 2"):
        find_learning_rate(trainer, num_steps=1)
    with pytest.raises(ConfigError, match=r"loss_key='nll': is not in the dict training_step "
                                          r"returned \(keys \['loss'\]\)"):
        find_learning_rate(trainer, num_steps=5, loss_key="nll")
