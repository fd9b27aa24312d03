"""Per-step time of the example LlamaTrainer vs a hand-written PyTorch loop doing the same work.

    python -m torch.distributed.run --standalone --nproc-per-node 2 bench/step_time.py --write

What is compared: one optimizer step (load a batch, forward, cross-entropy loss, backward, clip the
global grad norm to 1.0, AdamW step, LambdaLR step, zero_grad) of a small Llama sharded with FSDP2
over every rank (gloo on CPU), run by (a) ``examples/llama/train.py``'s ``LlamaTrainer.fit()`` and
(b) a plain loop written against torch only (plus the model and dataset classes).

Why it is fair: both sides build the same model on the meta device, ``fully_shard`` every block
(the last one without resharding after forward) and then the root, materialise with ``to_empty`` +
``init_weights``, use the same seed, param groups, optimizer, scheduler, sampler and batches, and
clipping math (``get_total_norm`` -> ``full_tensor`` -> ``clip_grads_with_norm_``). The trainer
runs with no printing callback and no validation. Each side records ``perf_counter`` after every
step on rank 0; the per-step time is the wall time of steps ``W+1..W+N`` divided by ``N`` (setup and
warm-up excluded, no extra barriers: FSDP's collectives keep the ranks in lockstep). Runs of the two
sides alternate (the order flips each repeat) in the same processes and the median is reported.
The final losses of the two sides are printed: equal losses show that the work is the same.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import os
import platform
import re
import statistics
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("dream_trainer") is None:  # not pip-installed: use the checkout
    sys.path.insert(0, str(ROOT / "runtime"))

from dream_trainer.callbacks import Callback, CallbackCollection
from dream_trainer.data import ByteTextDataset, read_corpus
from dream_trainer.models import Llama

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Trainer step time vs raw PyTorch loop (FSDP2, 2 CPU processes)"
COMMAND = "python -m torch.distributed.run --standalone --nproc-per-node 2 bench/step_time.py"
TARGET = 1.02


def load_example() -> Any:
    """Import ``examples/llama/train.py`` (not a package) as a module."""
    spec = importlib.util.spec_from_file_location("llama_train", ROOT / "examples/llama/train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class StepTimer(Callback):
    """Records ``perf_counter`` after every training step, and the last loss."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.loss: torch.Tensor | None = None

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        self.times.append(time.perf_counter())
        self.loss = result["loss"]


def run_trainer(example: Any, example_argv: list[str]) -> tuple[list[float], float]:
    """``LlamaTrainer.fit()`` with the example's config, a StepTimer as the only callback."""
    config = example.make_config(example.parse_args(example_argv))
    timer = StepTimer()
    config.callbacks = CallbackCollection([timer])
    trainer = example.LlamaTrainer(config)
    trainer.fit()
    assert timer.loss is not None
    return timer.times, timer.loss.item()


def run_raw(example: Any, example_argv: list[str], mesh: DeviceMesh,
            root_reshard: bool | None = None) -> tuple[list[float], float]:
    """The same work written as a plain PyTorch loop. ``root_reshard`` is passed to the root's
    ``fully_shard`` (None: FSDP's default, which keeps the root unsharded between forward and
    backward; True: what ``dream_trainer.parallel.apply_fsdp`` passes)."""
    cfg = example.make_config(example.parse_args(example_argv))  # only read for hyperparameters
    params, seed = cfg.training_parameters, cfg.seed
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Llama(cfg.model)
    blocks = list(model.layers.values())
    for i, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, reshard_after_forward=root_reshard)
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights()

    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": cfg.weight_decay},
         {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}],
        lr=cfg.learning_rate, betas=(0.9, 0.95))
    warmup = max(1, cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))

    dataset = ByteTextDataset(read_corpus(cfg.data_path), cfg.sequence_length, split="train")
    sampler = DistributedSampler(dataset, num_replicas=mesh.size(), rank=mesh.get_local_rank(),
                                 shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(0)
    loader = DataLoader(dataset, batch_size=params.train_batch_size // mesh.size(),
                        sampler=sampler)

    model.train()
    times: list[float] = []
    loss = torch.zeros(())
    for batch in islice(loader, params.max_steps):
        tokens = batch["input_ids"]
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), params.gradient_clip_val,
                                             norm, foreach=True)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    return times, loss.item()


def step_stats(times: list[float], warmup: int, steps: int) -> tuple[float, float]:
    """(wall time of steps warmup+1 .. warmup+steps / steps, median single step), in ms."""
    assert len(times) == warmup + steps, f"expected {warmup + steps} steps, got {len(times)}"
    timed = times[warmup - 1:]
    single = [(b - a) * 1000.0 for a, b in zip(timed, timed[1:])]
    return (timed[-1] - timed[0]) * 1000.0 / steps, statistics.median(single)


def write_results(text: str) -> None:
    """Replace (or append) this benchmark's section of bench/RESULTS.md."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip() + "\n\n" + text
    RESULTS.write_text(new.rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each side, interleaved")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size")
    parser.add_argument("--raw-root-reshard", action="store_true",
                        help="raw loop passes reshard_after_forward=True to the root, as "
                             "apply_fsdp does (attributes that part of the trainer's overhead)")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    assert args.warmup >= 1 and args.steps >= 1

    dist.init_process_group("gloo")  # DistributedWorld reuses it
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp_shard",))
    example = load_example()
    total = args.warmup + args.steps
    example_argv = ["--dim", str(args.dim), "--layers", str(args.layers),
                    "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
                    "--max-steps", str(total), "--val-every", str(total + 1)]
    root_reshard = True if args.raw_root_reshard else None

    stats: dict[str, list[tuple[float, float]]] = {"raw": [], "trainer": []}
    losses: dict[str, list[float]] = {"raw": [], "trainer": []}
    for r in range(args.repeats):
        for side in ("raw", "trainer") if r % 2 == 0 else ("trainer", "raw"):
            torch.manual_seed(0)
            times, loss = (run_raw(example, example_argv, mesh, root_reshard) if side == "raw"
                           else run_trainer(example, example_argv))
            stats[side].append(step_stats(times, args.warmup, args.steps))
            losses[side].append(loss)
            gc.collect()

    if rank == 0:
        wall = {side: statistics.median(m for m, _ in runs) for side, runs in stats.items()}
        single = {side: statistics.median(s for _, s in runs) for side, runs in stats.items()}
        ratio = wall["trainer"] / wall["raw"]
        rows = [f"| {side} | {', '.join(f'{m:.1f}' for m, _ in stats[side])} | "
                f"**{wall[side]:.1f}** | {single[side]:.1f} | {losses[side][-1]:.4f} |"
                for side in ("raw", "trainer")]
        machine = (f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
                   f"{world} gloo processes x {torch.get_num_threads()} thread(s)")
        flags = ("steps", "warmup", "repeats", "dim", "layers", "seq_len", "batch_size")
        cmd = COMMAND + "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k in flags)
        cmd += " --raw-root-reshard" * args.raw_root_reshard
        text = "\n".join([
            SECTION, "",
            f"- date: {datetime.date.today().isoformat()}",
            f"- command: `{cmd} --write`",
            f"- machine: {machine}",
            f"- work: Llama dim {args.dim}, {args.layers} layers, seq {args.seq_len}, global batch "
            f"{args.batch_size} (local {args.batch_size // world}), FSDP2 dp_shard={world}, AdamW, "
            f"LambdaLR warmup, clip 1.0; {args.warmup} warm-up + {args.steps} timed steps per run, "
            f"{args.repeats} runs per side, interleaved; raw root reshard_after_forward="
            f"{root_reshard}",
            "",
            "| side | ms/step of each run (wall / steps) | median ms/step | median single step ms "
            "| final loss |",
            "|---|---|---|---|---|",
            *rows, "",
            f"**ratio trainer / raw = {ratio:.3f}** (median wall ms/step; target <= {TARGET}: "
            f"{'met' if ratio <= TARGET else 'NOT met'}); by median single step: "
            f"{single['trainer'] / single['raw']:.3f}", ""])
        print(text, flush=True)
        if args.write:
            write_results(text)
            print(f"wrote {RESULTS.relative_to(ROOT)}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
