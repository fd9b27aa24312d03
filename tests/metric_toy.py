"""A tiny classifier trainer with torchmetrics metrics, shared by the metric and logger tests
(in-process) and ``distributed/metric_scenarios.py`` (under torchrun).

Every run starts from the same full weights (loaded through DCP's full-state-dict path), so a
sharded run's model can be rebuilt here and evaluated on all the data in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed.checkpoint.state_dict as dcp_sd
import torch.nn.functional as F
import torchmetrics
from dream_trainer import DreamTrainer, DreamTrainerConfig
from dream_trainer.callbacks import Callback, CallbackCollection
from dream_trainer.configs import DeviceParameters, TrainingParameters
from torch import nn
from torch.distributed.tensor import DTensor, Replicate
from torch.utils.data import DataLoader, Dataset

FEATURES, CLASSES, HIDDEN = 8, 4, 16


class Blobs(Dataset):
    """Noisy linearly separable classes: a model gets some right and some wrong quickly."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, FEATURES, generator=g)
        w = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(99))
        noise = 1.5 * torch.randn(n, CLASSES, generator=g)
        self.y = (self.x @ w + noise).argmax(-1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(HIDDEN, 2 * HIDDEN)
        self.down = nn.Linear(2 * HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(x)))


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, HIDDEN)
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def reference_weights(seed: int = 7) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return Classifier().state_dict()


def make_metrics() -> dict[str, Any]:
    """The metrics the trainer tracks (fresh objects: also the single-process reference)."""
    return {
        "accuracy": torchmetrics.Accuracy(task="multiclass", num_classes=CLASSES),
        "scores": torchmetrics.MetricCollection({
            "f1": torchmetrics.F1Score(task="multiclass", num_classes=CLASSES, average="macro"),
            "auroc": torchmetrics.AUROC(task="multiclass", num_classes=CLASSES),  # list states
            "per_class": torchmetrics.Recall(task="multiclass", num_classes=CLASSES,
                                             average=None),
        }),
        "seen": torchmetrics.SumMetric(),  # samples: counts a rank twice if synced wrongly
    }


@dataclass(kw_only=True)
class MetricConfig(DreamTrainerConfig):
    lr: float = 0.1
    n_train: int = 64
    n_val: int = 48
    with_metrics: bool = True


class MetricTrainer(DreamTrainer):
    config: MetricConfig

    def configure_models(self) -> None:
        self.model = Classifier()

    def init_weights(self) -> None:
        options = dcp_sd.StateDictOptions(full_state_dict=True)
        dcp_sd.set_model_state_dict(self.model, reference_weights(), options=options)

    def configure_optimizers(self) -> None:
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr)

    def configure_metrics(self) -> None:
        if self.config.with_metrics:
            for name, metric in make_metrics().items():
                setattr(self, name, metric)

    def apply_tensor_parallel(self, tp_mesh: Any) -> None:
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            RowwiseParallel,
            parallelize_module,
        )

        plan = {f"layers.{i}.{name}": style for i in range(2)
                for name, style in (("up", ColwiseParallel()), ("down", RowwiseParallel()))}
        # every parameter a DTensor (the gradient norm needs it): gathered outputs at the ends
        plan |= {name: ColwiseParallel(output_layouts=Replicate()) for name in ("embed", "head")}
        parallelize_module(self.model, tp_mesh, plan)

    def configure_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        train, val = Blobs(self.config.n_train, 0), Blobs(self.config.n_val, 1)
        return (DataLoader(train, batch_size=self.local_batch_size("train"),
                           sampler=self.get_train_sampler(train)),
                DataLoader(val, batch_size=self.local_batch_size("val"),
                           sampler=self.get_val_sampler(val)))

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.backward(loss)
        if not self.is_accumulating_gradients:
            return {"loss": loss, "grad_norm": self.step(self.model, self.optimizer)}
        return {"loss": loss}

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        x, y = batch
        logits = self.model(x)
        if isinstance(logits, DTensor):
            logits = logits.full_tensor()
        if self.config.with_metrics:
            self.accuracy(logits, y)            # forward: updates and returns the batch value
            self.scores.update(logits, y)
            self.seen.update(torch.tensor(float(len(y))))
        return {"val_loss": F.cross_entropy(logits, y)}


class ValidationRecorder(Callback):
    """Keeps every (non-sanity) validation result, as callbacks see it."""

    def __init__(self) -> None:
        self.results: list[dict[str, float]] = []

    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        if not self.trainer.sanity_checking:
            self.results.append(dict(result))


def metric_config(device: DeviceParameters | None = None, *, steps: int = 4, batch: int = 8,
                  val_every: int | None = 2, callbacks: list[Callback] | None = None,
                  **fields: Any) -> MetricConfig:
    return MetricConfig(
        device_parameters=device or DeviceParameters.SINGLE_DEVICE(),
        training_parameters=TrainingParameters(
            n_epochs=None, max_steps=steps, train_batch_size=batch, val_batch_size=8,
            val_every_n_steps=val_every, num_sanity_val_steps=1),
        callbacks=CallbackCollection([ValidationRecorder(), *(callbacks or [])]),
        **fields)


def reference_metrics(params: dict[str, torch.Tensor], n_val: int = 48) -> dict[str, Any]:
    """Metrics of a model with ``params`` over the whole validation set, in one process with fresh
    torchmetrics objects (no distributed sync involved)."""
    model = Classifier()
    model.load_state_dict(params)
    data = Blobs(n_val, 1)
    with torch.no_grad():
        logits = model(data.x)
    out: dict[str, Any] = {}
    for name, metric in make_metrics().items():
        if name == "seen":
            metric.update(torch.tensor(float(n_val)))
        else:
            metric.update(logits, data.y)
        out[name] = metric.compute()
    return out


def full_parameters(trainer: MetricTrainer) -> dict[str, torch.Tensor]:
    state = dcp_sd.get_model_state_dict(
        trainer.model, options=dcp_sd.StateDictOptions(full_state_dict=True))
    return {k: v.detach().cpu().clone() for k, v in state.items()}
