"""Train a small Llama-style LM on local text with Dream Trainer.

    dream-trainer run examples/llama/train.py --nproc 2            # 2 processes, FSDP2
    python examples/llama/train.py --max-steps 20                  # one process
    torchrun --nproc-per-node 4 examples/llama/train.py --dp-replicate 2   # HSDP 2 x 2

The data is a directory of text files (``--data``), read as bytes; by default the Python
standard library's sources, which ship with every Python.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

import torch
from dream_trainer import DreamTrainer, DreamTrainerConfig
from dream_trainer.callbacks import (
    CallbackCollection,
    CheckpointCallback,
    LoggerCallback,
    ProgressCallback,
)
from dream_trainer.configs import CheckpointParameters, DeviceParameters, TrainingParameters
from dream_trainer.data import ByteTextDataset, read_corpus
from dream_trainer.models import Llama, LlamaArgs
from dream_trainer.models.llama_parallel import LlamaParallelMixin
from dream_trainer.parallel.tensor_parallel import check_sequence_length
from dream_trainer.utils import distributed_launch, rank_zero_print
from torch.utils.data import DataLoader


@dataclass(kw_only=True)
class LlamaTrainerConfig(DreamTrainerConfig):
    model: LlamaArgs = field(default_factory=LlamaArgs)
    sequence_length: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 10
    data_path: str | None = None
    """A directory (or file) of text; None: the Python standard library's sources."""


class LlamaTrainer(LlamaParallelMixin, DreamTrainer):
    """TP, PP and loss parallelism come from LlamaParallelMixin; FSDP/DDP, compile and
    activation checkpointing from the defaults."""

    config: LlamaTrainerConfig

    def configure_models(self) -> None:
        dims = self.world.dims
        check_sequence_length(self.config.sequence_length, dims.tp, dims.cp)
        self.model = Llama(self.config.model)

    def init_weights(self) -> None:
        for part in self.model_parts("model"):
            part.init_weights()

    def configure_optimizers(self) -> None:
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.config.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.config.learning_rate, betas=(0.9, 0.95))

    def configure_schedulers(self) -> None:
        warmup = max(1, self.config.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup))

    def configure_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        data = read_corpus(self.config.data_path)
        seq = self.config.sequence_length
        train = ByteTextDataset(data, seq, split="train")
        val = ByteTextDataset(data, seq, split="val")
        return (
            DataLoader(train, batch_size=self.local_batch_size("train"),
                       sampler=self.get_train_sampler(train)),
            DataLoader(val, batch_size=self.local_batch_size("val"),
                       sampler=self.get_val_sampler(val)),
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        loss = self.lm_step(batch["input_ids"])
        if not self.is_accumulating_gradients:
            grad_norm = self.step(self.model, self.optimizer)
            return {"loss": loss, "grad_norm": grad_norm}
        return {"loss": loss}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        return {"val_loss": self.lm_step(batch["input_ids"])}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch size")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dp-replicate", type=int, default=1,
                        help="replicas (>1 with the rest sharded: HSDP)")
    parser.add_argument("--ddp", action="store_true", help="replicate instead of sharding")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree")
    parser.add_argument("--pp-schedule", default="1F1B")
    parser.add_argument("--loss-parallel", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument("--ac", choices=("none", "full", "selective"), default="none")
    parser.add_argument("--data", default=None, help="directory of text files")
    parser.add_argument("--val-every", type=int, default=50, help="validate every N steps")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                        help="checkpoint every N steps (to $DREAM_CHECKPOINT_URI under the "
                        "operator, else ./checkpoints) and resume from the latest")
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> LlamaTrainerConfig:
    # LoggerCallback: metrics.jsonl/.csv and, at the end, loss_curve.png in $DREAM_LOG_DIR (the
    # local runner's run directory) or runs/<job or experiment>
    callbacks: list = [ProgressCallback(every_n_steps=args.log_every),
                       LoggerCallback(log_every_n_train_batches=max(1, args.log_every // 5))]
    if args.checkpoint_every is not None:
        callbacks.append(CheckpointCallback(CheckpointParameters(
            checkpoint_every_n_steps=args.checkpoint_every, checkpoint_every_n_epochs=None)))
    common = {"tensor_parallel": args.tp, "pipeline_parallel": args.pp,
              "pipeline_schedule": args.pp_schedule, "loss_parallel": args.loss_parallel,
              "compile_model": args.compile, "checkpoint_activations": args.ac != "none",
              "activation_checkpointing_mode": "full" if args.ac == "none" else args.ac}
    if args.ddp:
        device = DeviceParameters.DDP(**common)
    elif args.dp_replicate > 1:
        device = DeviceParameters(dp_replicate=args.dp_replicate, dp_shard="auto", **common)
    else:
        device = DeviceParameters.FSDP(**common)
    return LlamaTrainerConfig(
        experiment="llama",  # runs/llama when run without a job manifest
        model=LlamaArgs(dim=args.dim, n_layers=args.layers, n_heads=max(1, args.dim // 32),
                        max_seq_len=args.seq_len),
        sequence_length=args.seq_len,
        data_path=args.data,
        device_parameters=device,
        training_parameters=TrainingParameters(
            n_epochs=None, max_steps=args.max_steps, train_batch_size=args.batch_size,
            gradient_accumulation_steps=args.grad_accum, gradient_clip_val=1.0,
            val_every_n_steps=args.val_every, val_steps_per_epoch=4),
        callbacks=CallbackCollection(callbacks),
    )


def main(argv: list[str] | None = None) -> None:
    config = make_config(parse_args(argv))
    trainer = LlamaTrainer(config)
    rank_zero_print(f"world size {trainer.world.size}, mesh {trainer.world.dims}")
    trainer.fit()
    # One machine-readable line: the e2e tests compare a resumed run's final loss with an
    # uninterrupted one's, exactly.
    progress = next(c for c in trainer.callbacks.values() if isinstance(c, ProgressCallback))
    rank_zero_print("summary " + json.dumps(progress.summary))


if __name__ == "__main__":
    distributed_launch(main)
