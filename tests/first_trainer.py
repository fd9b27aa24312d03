"""The trainer from seed 001's "Your First Trainer", as a user would write it from that page.

Only what the page leaves to the user is filled in: ``TransformerModel``, ``_init_weights`` and
the two ``_make_*_loader`` helpers. Everything else is the page's code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dream_trainer import BaseTrainer, BaseTrainerConfig
from dream_trainer.callbacks import CallbackCollection
from dream_trainer.configs import DeviceParameters, TrainingParameters
from dream_trainer.trainer.mixins import SetupConfigMixin, SetupMixin

VOCAB, SEQ = 16, 12


class CountingSequences(Dataset):
    """Sequences that count up modulo VOCAB from a random start: learnable in a few steps."""

    def __init__(self, n: int, seed: int) -> None:
        starts = torch.randint(0, VOCAB, (n, 1), generator=torch.Generator().manual_seed(seed))
        self.data = (starts + torch.arange(SEQ + 1)) % VOCAB

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


class Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(),
                                 nn.Linear(4 * hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class TransformerModel(nn.Module):
    """Takes a batch of token sequences, returns the next-token loss."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden_size)
        self.layers = nn.ModuleList(Block(hidden_size) for _ in range(2))
        self.head = nn.Linear(hidden_size, VOCAB)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.embed(batch[:, :-1])
        for layer in self.layers:
            x = layer(x)
        return F.cross_entropy(self.head(x).flatten(0, 1), batch[:, 1:].flatten())


# ---- the page's code -----------------------------------------------------------------------
@dataclass
class MyTrainerConfig(BaseTrainerConfig, SetupConfigMixin):
    # BaseTrainerConfig provides: epochs, batch_size, etc.
    # SetupConfigMixin adds: model/optimizer/dataloader configs
    learning_rate: float = 3e-4
    hidden_size: int = 768


class MyTrainer(BaseTrainer, SetupMixin):
    config: MyTrainerConfig

    # SetupMixin requires these methods:
    def configure_models(self):
        """Define your models (on meta device - no memory used!)"""
        self.model = TransformerModel(self.config.hidden_size)

    def init_weights(self):
        """Initialize weights after parallelism is applied"""
        self.model.apply(self._init_weights)

    def configure_optimizers(self):
        """Define optimizers"""
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.config.learning_rate
        )

    def configure_dataloaders(self):
        """Return train and validation dataloaders"""
        return self._make_train_loader(), self._make_val_loader()

    # BaseTrainer requires these methods:
    def training_step(self, batch, batch_idx):
        """Your forward pass and loss computation"""
        loss = self.model(batch)
        self.backward(loss)  # Handles gradient accumulation!

        if not self.is_accumulating_gradients:
            grad_norm = self.step(self.model, self.optimizer)
            return {"loss": loss, "grad_norm": grad_norm}

        return {"loss": loss}

    def validation_step(self, batch, batch_idx):
        """Validation forward pass"""
        with torch.no_grad():
            loss = self.model(batch)
        return {"val_loss": loss}

    # ---- what the page leaves to the user ---------------------------------------------------
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
            module.reset_parameters()

    def _make_train_loader(self) -> DataLoader:
        dataset = CountingSequences(256, seed=0)
        return DataLoader(dataset, batch_size=self.local_batch_size("train"),
                          sampler=self.get_train_sampler(dataset))

    def _make_val_loader(self) -> DataLoader:
        dataset = CountingSequences(32, seed=1)
        return DataLoader(dataset, batch_size=self.local_batch_size("val"),
                          sampler=self.get_val_sampler(dataset))


def train(dp_shard: int) -> dict:
    from toy import LossRecorder

    config = MyTrainerConfig(
        device_parameters=DeviceParameters(dp_shard=dp_shard),
        training_parameters=TrainingParameters(n_epochs=2, train_batch_size=16),
        callbacks=CallbackCollection([LossRecorder()]),
        learning_rate=1e-2,
        hidden_size=32,
    )
    trainer = MyTrainer(config)
    trainer.fit()
    return {"losses": config.callbacks["LossRecorder"].losses,
            "val": trainer.last_validation_result, "global_step": trainer.global_step}
