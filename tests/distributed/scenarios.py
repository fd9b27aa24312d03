"""Multi-process scenarios, run under torchrun and compared by tests with single-process runs.

    python -m torch.distributed.run --standalone --nproc-per-node N \
        tests/distributed/scenarios.py OUT_DIR SCENARIO [SCENARIO ...]

Rank 0 saves each scenario's result to ``OUT_DIR/<scenario>.pt``. Grouping many scenarios into one
launch keeps the suite fast: a torchrun launch costs seconds, a scenario a fraction of that.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dream_trainer.configs import DeviceParameters  # noqa: E402
from toy import run, toy_config  # noqa: E402

SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "fsdp": lambda: run(toy_config(DeviceParameters.FSDP())),
    "hsdp": lambda: run(toy_config(DeviceParameters.HSDP(dp_shard=2))),
    "ddp": lambda: run(toy_config(DeviceParameters.DDP())),
    "fsdp_accumulate": lambda: run(toy_config(DeviceParameters.FSDP(), steps=2, batch=2,
                                              accumulation=4)),
    "ddp_accumulate": lambda: run(toy_config(DeviceParameters.DDP(), steps=2, batch=2,
                                             accumulation=4)),
    "first_trainer": lambda: __import__("first_trainer").train(dp_shard=dist.get_world_size()),
}


def main(out_dir: str, names: list[str]) -> None:
    for name in names:
        result = SCENARIOS[name]()
        if dist.get_rank() == 0:
            torch.save(result, Path(out_dir) / f"{name}.pt")
        dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
