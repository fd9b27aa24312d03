"""Checkpoint throughput on a local S3 server (SeaweedFS), against raw s3fs, in one run.

    python bench/checkpoint_s3.py [--mb 256] [--repeats 3] [--write]

Measured, for the same state (a Llama model + AdamW state, ~--mb MB):
- save: the trainer's checkpoint writer (DCP over fsspec) vs raw s3fs PUT of the same bytes;
- load: DCP load vs raw s3fs GET of the files the save produced, and vs raw s3fs fetching them
  as concurrent 32 MiB ranges (what the checkpoint reader does);
- async: time the training step is blocked by ``async_save`` vs a synchronous save.
Ratios are throughput(DCP) / throughput(raw) and blocking(async) / duration(sync).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.state_dict as dcp_sd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dream_trainer.checkpoint.storage import CheckpointStore  # noqa: E402
from dream_trainer.checkpoint.writer import checkpoint_reader, checkpoint_writer  # noqa: E402
from dream_trainer.models import Llama, LlamaArgs  # noqa: E402
from s3_server import seaweedfs  # noqa: E402


def make_state(megabytes: int) -> dict:
    dim = 512
    per_layer = 12 * dim * dim * 4 * 3  # weights + two Adam moments, fp32
    layers = max(1, megabytes * 2**20 // per_layer)
    model = Llama(LlamaArgs(dim=dim, n_layers=layers, n_heads=8, vocab_size=256))
    model.init_weights()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long)).sum().backward()
    optimizer.step()
    return {"model": dcp_sd.get_model_state_dict(model),
            "optim": dcp_sd.get_optimizer_state_dict(model, optimizer)}


def total_bytes(store: CheckpointStore, name: str) -> tuple[int, list[str]]:
    files = [f for f in store.fs.find(f"{store.root}/{name}") if not f.endswith(".metadata")]
    return sum(store.fs.size(f) for f in files), files


def ranged_get(fs, path: str, part: int = 32 * 2**20) -> bytes:
    """Raw s3fs with the same concurrent 32 MiB ranges the checkpoint reader uses."""
    size = fs.size(path)
    starts = list(range(0, size, part))
    return b"".join(fs.cat_ranges([path] * len(starts), starts,
                                  [min(s + part, size) for s in starts]))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    state = make_state(args.mb)
    with seaweedfs(Path(tempfile.mkdtemp())) as env:
        os.environ.update(env)
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        store = CheckpointStore("s3://bench/ckpt")
        rows: dict[str, list[float]] = {k: [] for k in
                                        ("dcp_save", "raw_put", "dcp_load", "raw_get",
                                         "raw_get_ranged", "sync_save", "async_block")}
        for i in range(args.repeats):
            name = f"step_{i:09d}"
            rows["dcp_save"].append(timed(lambda: dcp.save(
                state, storage_writer=checkpoint_writer(store.url_of(name)))))
            size, files = total_bytes(store, name)
            blobs = {f: fs.cat_file(f) for f in files}
            rows["raw_put"].append(timed(lambda: [fs.pipe_file(f"bench/raw{i}/{k}", v)
                                                  for k, (_, v) in enumerate(blobs.items())]))
            rows["dcp_load"].append(timed(lambda: dcp.load(
                state, storage_reader=checkpoint_reader(store.url_of(name)))))
            rows["raw_get"].append(timed(lambda: [fs.cat_file(f) for f in files]))
            rows["raw_get_ranged"].append(timed(lambda: [ranged_get(fs, f) for f in files]))
            sync_name, async_name = f"sync_{i}", f"async_{i}"
            rows["sync_save"].append(timed(lambda: dcp.save(
                state, storage_writer=checkpoint_writer(store.url_of(sync_name)))))
            future = None

            def start_async() -> None:
                nonlocal future
                future = dcp.async_save(state, storage_writer=checkpoint_writer(
                    store.url_of(async_name)))

            rows["async_block"].append(timed(start_async))
            future.result()
        median = {k: statistics.median(v) for k, v in rows.items()}
        mb = size / 2**20
        table = [
            ("save", mb / median["dcp_save"], mb / median["raw_put"],
             median["raw_put"] / median["dcp_save"]),
            ("load", mb / median["dcp_load"], mb / median["raw_get"],
             median["raw_get"] / median["dcp_load"]),
            ("load vs ranged GETs", mb / median["dcp_load"], mb / median["raw_get_ranged"],
             median["raw_get_ranged"] / median["dcp_load"]),
        ]
        lines = [f"| {op} | {dcp_rate:.0f} MB/s | {raw_rate:.0f} MB/s | {ratio:.2f}x |"
                 for op, dcp_rate, raw_rate, ratio in table]
        block = median["async_block"] / median["sync_save"]
        report = "\n".join([
            f"{mb:.0f} MB of model + optimizer state, median of {args.repeats}, "
            f"torch {torch.__version__}, {os.cpu_count()} CPU cores, SeaweedFS on 127.0.0.1:",
            "", "| op | checkpoint (DCP) | raw s3fs | ratio |", "|---|---|---|---|", *lines, "",
            f"async save blocks training for {median['async_block'] * 1000:.0f} ms vs "
            f"{median['sync_save'] * 1000:.0f} ms for a synchronous save: {block:.1%}.",
        ])
        print(report)
        if args.write:
            results = Path(__file__).parent / "RESULTS.md"
            text = results.read_text() if results.exists() else "# Benchmark results\n"
            heading = "## Checkpoint throughput on S3 (SeaweedFS) vs raw s3fs"
            text = text.split(heading)[0].rstrip() + "\n\n" + "\n".join([
                heading, "", f"`python bench/checkpoint_s3.py --mb {args.mb} --repeats "
                f"{args.repeats} --write` ({datetime.date.today()})", "", report, ""])
            results.write_text(text)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
