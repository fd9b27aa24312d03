"""Per-step time of the example LlamaTrainer vs a hand-written PyTorch loop doing the same work.

    python -m torch.distributed.run --standalone --nproc-per-node 2 bench/step_time.py --write

Compared: one optimizer step (load a batch, forward, cross-entropy loss, backward, clip the global
grad norm to 1.0, AdamW step, LambdaLR step, zero_grad) of a small Llama sharded with FSDP2 over
both ranks (gloo, CPU), run by (a) ``examples/llama/train.py``'s ``LlamaTrainer.fit()`` and (b) a
plain loop written against torch (plus the repo's model and dataset classes).

Why it is fair: both sides build the same model on the meta device, ``fully_shard`` every block
(the last without resharding after forward) and then the root with FSDP's default (kept gathered
from forward into backward), materialise (``to_empty`` +
``init_weights``) with the same seed, and use the same param groups, AdamW, LambdaLR, sampler,
batches and clipping math (``get_total_norm`` -> ``full_tensor`` -> ``clip_grads_with_norm_``).
The trainer runs with no printing callback and no validation. Each side
records ``perf_counter`` (and CPU time) after every step on rank 0; per-step time = wall time of
steps ``W+1..W+N`` / ``N`` (no extra barriers: FSDP's collectives keep the ranks in lockstep).
Runs of the two sides alternate in the same processes (order flips each repeat); medians are
reported.
Equal final losses on both sides show the work is the same.
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
sys.path.insert(0, str(ROOT / "runtime"))  # measure this checkout's runtime, whatever is installed

from dream_trainer.callbacks import Callback, CallbackCollection  # noqa: E402
from dream_trainer.data import ByteTextDataset, read_corpus  # noqa: E402
from dream_trainer.models import Llama  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Trainer step time vs raw PyTorch loop (FSDP2, 2 CPU processes)"
COMMAND = "python -m torch.distributed.run --standalone --nproc-per-node 2 bench/step_time.py"
TARGET = 1.02


Stamp = tuple[float, float]


def stamp() -> Stamp:
    """Wall time and this process's CPU time (all threads), in seconds."""
    return time.perf_counter(), time.process_time()


def load_example() -> Any:
    """Import ``examples/llama/train.py`` (not a package) as a module."""
    spec = importlib.util.spec_from_file_location("llama_train", ROOT / "examples/llama/train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class StepTimer(Callback):
    """Records :func:`stamp` after every training step, and the last loss."""

    def __init__(self) -> None:
        self.times: list[Stamp] = []
        self.loss: torch.Tensor | None = None

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        self.times.append(stamp())
        self.loss = result["loss"]


def run_trainer(example: Any, example_argv: list[str]) -> tuple[list[Stamp], float]:
    """``LlamaTrainer.fit()`` with the example's config, a StepTimer as the only callback."""
    config = example.make_config(example.parse_args(example_argv))
    timer = StepTimer()
    config.callbacks = CallbackCollection([timer])
    trainer = example.LlamaTrainer(config)
    trainer.fit()
    assert timer.loss is not None
    return timer.times, timer.loss.item()


def run_raw(example: Any, example_argv: list[str],
            mesh: DeviceMesh) -> tuple[list[Stamp], float]:
    """The same work written as a plain PyTorch loop."""
    cfg = example.make_config(example.parse_args(example_argv))  # only read for hyperparameters
    params, seed = cfg.training_parameters, cfg.seed
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Llama(cfg.model)
    blocks = list(model.layers.values())
    for i, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh)
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
    times: list[Stamp] = []
    loss = torch.zeros(())
    for batch in islice(loader, params.max_steps):
        tokens = batch["input_ids"]
        inputs, target = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        loss = F.cross_entropy(model(inputs).flatten(0, 1).float(), target.flatten())
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), params.gradient_clip_val,
                                             norm, foreach=True)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(stamp())
    return times, loss.item()


def step_stats(times: list[Stamp], warmup: int, steps: int) -> tuple[float, float]:
    """Wall and CPU ms per step over steps warmup+1 .. warmup+steps."""
    assert len(times) == warmup + steps, f"expected {warmup + steps} steps, got {len(times)}"
    (wall0, cpu0), (wall1, cpu1) = times[warmup - 1], times[-1]
    return (wall1 - wall0) * 1000.0 / steps, (cpu1 - cpu0) * 1000.0 / steps


def report(args: argparse.Namespace, world: int, stats: dict[str, list[tuple[float, float]]],
           losses: dict[str, float]) -> str:
    """The markdown section: setup, one row per side, the ratios."""
    wall = {side: statistics.median(w for w, _ in runs) for side, runs in stats.items()}
    cpu = {side: statistics.median(c for _, c in runs) for side, runs in stats.items()}
    ratio = wall["trainer"] / wall["raw"]
    # Runs i of both sides ran back to back, so their ratio cancels slow drifts of the machine.
    paired = statistics.median(t[0] / r[0] for t, r in zip(stats["trainer"], stats["raw"]))
    flags = ("steps", "warmup", "repeats", "dim", "layers", "seq_len", "batch_size")
    cmd = COMMAND + "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k in flags)
    return "\n".join([
        SECTION, "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- command: `{cmd} --write`",
        f"- machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__},"
        f" {world} gloo processes x {torch.get_num_threads()} thread(s)",
        f"- work: Llama dim {args.dim}, {args.layers} layers, seq {args.seq_len}, global batch "
        f"{args.batch_size} (local {args.batch_size // world}), FSDP2 dp_shard={world}; "
        f"{args.warmup} warm-up + {args.steps} timed steps per run, {args.repeats} runs per side "
        "interleaved", "",
        "| side | ms/step of each run (wall / steps) | median ms/step | rank-0 CPU ms/step "
        "| final loss |", "|---|---|---|---|---|",
        *(f"| {side} | {', '.join(f'{w:.1f}' for w, _ in stats[side])} | **{wall[side]:.1f}** "
          f"| {cpu[side]:.1f} | {losses[side]:.4f} |" for side in ("raw", "trainer")), "",
        f"**ratio trainer / raw = {ratio:.3f}** (median ms/step; target <= {TARGET}: "
        f"{'met' if ratio <= TARGET else 'NOT met'}); median of per-repeat ratios {paired:.3f}; "
        f"CPU time ratio {cpu['trainer'] / cpu['raw']:.3f}", "",
        "Shared 2-core VM: run-to-run noise is a few percent (steal time, other processes), so "
        "compare the ratios of one run rather than milliseconds across runs.", ""])


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
    parser.add_argument("--repeats", type=int, default=6,
                        help="runs of each side, interleaved (even: each side goes first equally)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size")
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

    stats: dict[str, list[tuple[float, float]]] = {"raw": [], "trainer": []}
    losses: dict[str, float] = {}
    for r in range(args.repeats):
        for side in ("raw", "trainer") if r % 2 == 0 else ("trainer", "raw"):
            torch.manual_seed(0)
            times, loss = (run_trainer(example, example_argv) if side == "trainer" else
                           run_raw(example, example_argv, mesh))
            stats[side].append(step_stats(times, args.warmup, args.steps))
            losses[side] = loss
            gc.collect()

    if rank == 0:
        text = report(args, world, stats, losses)
        print(text, flush=True)
        if args.write:
            write_results(text)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
