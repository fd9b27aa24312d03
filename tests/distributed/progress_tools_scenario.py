"""Multi-process checks of the progress tools, run under torchrun by tests/test_progress_tools.py.

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/distributed/progress_tools_scenario.py OUT_DIR

Two toy runs: FSDP over both ranks with every progress tool attached (summaries must report
global parameter sizes; the bar, gc and benchmark collectives must not hang; every rank writes
its own profiler trace), then tensor parallelism over both ranks (summaries must say TP).
Each rank saves what it saw to ``OUT_DIR/rank{R}.pt``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dream_trainer.callbacks.benchmark import BenchmarkCallback
from dream_trainer.callbacks.garbage_collection import GarbageCollectionCallback
from dream_trainer.callbacks.profiler import ProfilerCallback
from dream_trainer.callbacks.progress_bar import ProgressBarCallback
from dream_trainer.callbacks.summary import ModelSummaryCallback
from dream_trainer.configs import DeviceParameters
from toy import ToyTrainer, toy_config


def rows(callback: ModelSummaryCallback) -> dict[str, Any]:
    summary = callback.model_summaries["model"]
    return {"params": summary.params, "trainable": summary.trainable, "local": summary.local,
            "rows": {r.name: (r.params, r.local, r.parallel) for r in summary.rows},
            "trainer": callback.trainer_summary}


def main(out_dir: str) -> None:
    out = Path(out_dir)
    summary, bench = ModelSummaryCallback(stream=io.StringIO()), BenchmarkCallback(warmup_steps=1)
    bar_stream = io.StringIO()
    bar = ProgressBarCallback(every_n_steps=2, stream=bar_stream)
    gc_callback = GarbageCollectionCallback(every_n_steps=2)
    profiler = ProfilerCallback(wait=0, warmup=1, active=1, output_dir=out / "traces", ranks=None)
    trainer = ToyTrainer(toy_config(DeviceParameters.FSDP(), steps=4,
                                    callbacks=[summary, bench, bar, gc_callback, profiler]))
    trainer.fit()
    result: dict[str, Any] = {
        "fsdp": rows(summary) if summary.model_summaries else None,
        "bar": bar_stream.getvalue(), "bar_summary": bar.summary,
        "bench_steps": len(bench.step_times), "gc": gc_callback.collected_at,
        "traces": [str(p) for p in profiler.traces],
    }
    tp_summary = ModelSummaryCallback(stream=io.StringIO())
    tp = ToyTrainer(toy_config(DeviceParameters(dp_shard=1, tensor_parallel=2), steps=1,
                               callbacks=[tp_summary]))
    tp.fit()
    result["tp"] = rows(tp_summary) if tp_summary.model_summaries else None
    torch.save(result, out / f"rank{dist.get_rank()}.pt")
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
