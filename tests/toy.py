"""A tiny Llama trainer on synthetic tokens, shared by single-process and multi-process tests.

Every run starts from the same full weights (built on CPU from a seed and loaded through DCP's
full-state-dict path), so a sharded run can be compared with a single-process reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint.state_dict as dcp_sd
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, Dataset

from dream_trainer import DreamTrainer, DreamTrainerConfig
from dream_trainer.callbacks import Callback, CallbackCollection
from dream_trainer.configs import DeviceParameters, TrainingParameters
from dream_trainer.models import Llama, LlamaArgs
from dream_trainer.models.llama_parallel import LlamaParallelMixin

ARGS = LlamaArgs(vocab_size=64, dim=32, n_layers=2, n_heads=4, max_seq_len=16)
SEQ = 16


class RandomTokens(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, ARGS.vocab_size, (n, SEQ + 1), generator=g)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.data[i], "index": i}


def llama_args(n_layers: int) -> LlamaArgs:
    return LlamaArgs(vocab_size=ARGS.vocab_size, dim=ARGS.dim, n_layers=n_layers,
                     n_heads=ARGS.n_heads, max_seq_len=ARGS.max_seq_len)


def reference_weights(n_layers: int = ARGS.n_layers, seed: int = 1234) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = Llama(llama_args(n_layers))
    model.init_weights()
    return model.state_dict()


class LossRecorder(Callback):
    """Records the loss of every optimizer step, averaged over micro-batches and dp ranks."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self._pending: list[torch.Tensor] = []

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        self._pending.append(result["loss"].detach())
        if not self.trainer.is_accumulating_gradients:
            mean = torch.stack(self._pending).mean()
            self.losses.append(float(self.trainer.world.all_reduce_mean(mean)))
            self._pending = []


@dataclass(kw_only=True)
class ToyConfig(DreamTrainerConfig):
    lr: float = 0.5
    n_samples: int = 64
    n_layers: int = ARGS.n_layers


class ToyTrainer(LlamaParallelMixin, DreamTrainer):
    config: ToyConfig

    def configure_models(self) -> None:
        self.model = Llama(llama_args(self.config.n_layers))

    def init_weights(self) -> None:
        full = reference_weights(self.config.n_layers)
        options = dcp_sd.StateDictOptions(full_state_dict=True, strict=False)
        for part in self.model_parts("model"):
            part.init_weights()  # buffers (rope tables); the weights are then replaced
            dcp_sd.set_model_state_dict(part, full, options=options)

    def configure_optimizers(self) -> None:
        # SGD is linear in the gradients, so a wrong reduction shows in the parameters directly;
        # Adam would magnify reduction-order noise on near-zero gradients instead.
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr,
                                         momentum=0.9)

    def configure_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        train, val = RandomTokens(self.config.n_samples, 0), RandomTokens(16, 1)
        return (DataLoader(train, batch_size=self.local_batch_size("train"),
                           sampler=self.get_train_sampler(train)),
                DataLoader(val, batch_size=self.local_batch_size("val"),
                           sampler=self.get_val_sampler(val)))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        loss = self.lm_step(batch["input_ids"])
        if not self.is_accumulating_gradients:
            return {"loss": loss, "grad_norm": self.step(self.model, self.optimizer)}
        return {"loss": loss}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        return {"val_loss": self.lm_step(batch["input_ids"])}


def toy_config(device: DeviceParameters | None = None, *, steps: int | None = 4, batch: int = 8,
               accumulation: int = 1, clip: float | None = 1.0, n_epochs: int | None = None,
               lr: float = 0.5, n_layers: int = ARGS.n_layers,
               callbacks: list[Callback] | None = None, **training: Any) -> ToyConfig:
    return ToyConfig(
        lr=lr, n_layers=n_layers,
        device_parameters=device or DeviceParameters.SINGLE_DEVICE(),
        training_parameters=TrainingParameters(
            n_epochs=n_epochs, max_steps=steps, train_batch_size=batch,
            gradient_accumulation_steps=accumulation, gradient_clip_val=clip, **training),
        callbacks=CallbackCollection([LossRecorder(), *(callbacks or [])]),
    )


def full_parameters(trainer: ToyTrainer) -> dict[str, torch.Tensor]:
    """Every parameter of the model, unsharded and gathered from all pipeline stages, keyed by
    its name in the unparallelised model (DCP's names drop wrapper prefixes such as AC's)."""
    local: dict[str, torch.Tensor] = {}
    for part in trainer.model_parts("model"):
        for name, value in dcp_sd.get_model_state_dict(part).items():
            value = value.full_tensor() if isinstance(value, DTensor) else value
            local[name] = value.detach().cpu().clone()
    gathered: list[dict[str, torch.Tensor]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, local)
    return {name: value for part in gathered for name, value in part.items()}


def run(config: ToyConfig) -> dict[str, Any]:
    """Train and return the per-step losses, the last validation and the full parameters."""
    trainer = ToyTrainer(config)
    trainer.fit()
    return {"losses": config.callbacks["LossRecorder"].losses, "params": full_parameters(trainer),
            "global_step": trainer.global_step, "val": trainer.last_validation_result}
