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

from dream_trainer.callbacks import Callback  # noqa: E402
from dream_trainer.configs import DeviceParameters  # noqa: E402
from toy import run, toy_config  # noqa: E402


class SyncProbe(Callback):
    """After each accumulating micro-batch, records whether gradients were reduced across ranks.

    FSDP2 without sync keeps the accumulated gradient unsharded and leaves ``param.grad`` unset;
    DDP without sync leaves each rank its own local gradient, so ranks disagree.
    """

    def __init__(self) -> None:
        self.synced: list[bool] = []

    def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
        if not self.trainer.is_accumulating_gradients:
            return
        params = list(self.trainer.model.parameters())
        if self.trainer.world.dims.fsdp_enabled:
            self.synced.append(any(p.grad is not None for p in params))
            return
        grad = params[0].grad.detach().clone()
        gathered = [torch.empty_like(grad) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, grad)
        self.synced.append(all(torch.equal(gathered[0], g) for g in gathered))


def optimize_fsdp() -> dict[str, Any]:
    from dream_trainer.callbacks import OptimizeFSDP

    callback = OptimizeFSDP(prefetch=2)
    result = run(toy_config(DeviceParameters.FSDP(), callbacks=[callback]))
    return {**result, "order": [type(m).__name__ for m in callback.order]}


def cp_sharding() -> dict[str, Any]:
    """What CPU can do of context parallelism: the load-balanced sharding of a batch and of the
    Llama's rotary tables (the buffers LlamaParallelMixin hands to ``context_parallel``)."""
    from dream_trainer.models import Llama
    from dream_trainer.parallel.context_parallel import context_parallel
    from dream_trainer.world import DistributedWorld
    from toy import llama_args

    world = DistributedWorld(DeviceParameters(dp_shard=1, context_parallel=2))
    model = Llama(llama_args(n_layers=1))
    tokens = torch.arange(2 * 16).reshape(2, 16)
    rope = model.rope_cos.clone()
    with context_parallel(world.cp_mesh, [tokens, model.rope_cos], [1, 0], no_restore=[tokens]):
        inside = {"tokens": tokens.clone(), "rope": model.rope_cos.clone()}
    shards = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(shards, {"rank": world.cp_mesh.get_local_rank(), **inside})
    return {"shards": shards, "tokens_after": tokens.shape,
            "rope_restored": torch.equal(model.rope_cos, rope), "rope": rope}


def accumulate(device: DeviceParameters) -> dict[str, Any]:
    probe = SyncProbe()
    result = run(toy_config(device, steps=2, batch=2, accumulation=4, callbacks=[probe]))
    return {**result, "synced": probe.synced}


def progress_server() -> dict[str, Any]:
    """Only global rank 0 serves progress; rank 0 reads its endpoint over HTTP while training."""
    import json
    import urllib.request

    from dream_trainer.callbacks import ProgressServerCallback

    server = ProgressServerCallback(port=0, every_n_steps=2)
    fetched: list[dict[str, Any]] = []

    class Fetch(Callback):
        def post_train_step(self, result: dict[str, Any], batch_idx: int) -> None:
            if server.port is not None:
                url = f"http://127.0.0.1:{server.port}/progress"
                with urllib.request.urlopen(url, timeout=10) as response:
                    fetched.append(json.loads(response.read()))

    ports: list[int | None] = [None] * dist.get_world_size()

    class Ports(Callback):
        def pre_fit(self) -> None:
            dist.all_gather_object(ports, server.port)

    result = run(toy_config(DeviceParameters.FSDP(), callbacks=[server, Ports(), Fetch()]))
    snapshots: list[dict[str, Any]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(snapshots, server.snapshot())
    return {**result, "ports": ports, "fetched": fetched, "snapshots": snapshots}


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "fsdp": lambda: run(toy_config(DeviceParameters.FSDP())),
    "hsdp": lambda: run(toy_config(DeviceParameters.HSDP(dp_shard=2))),
    "ddp": lambda: run(toy_config(DeviceParameters.DDP())),
    "fsdp_accumulate": lambda: accumulate(DeviceParameters.FSDP()),
    "ddp_accumulate": lambda: accumulate(DeviceParameters.DDP()),
    "fsdp_zero2": lambda: run(toy_config(DeviceParameters.FSDP(
        reshard_after_forward=False))),
    "fsdp_optimized": optimize_fsdp,
    "cp_sharding": cp_sharding,
    "fsdp_bf16": lambda: run(toy_config(DeviceParameters.FSDP(param_dtype=torch.bfloat16))),
    "first_trainer": lambda: __import__("first_trainer").train(dp_shard=dist.get_world_size()),
    "progress_server": progress_server,
}


def main(out_dir: str, names: list[str]) -> None:
    for name in names:
        result = SCENARIOS[name]()
        if dist.get_rank() == 0:
            torch.save(result, Path(out_dir) / f"{name}.pt")
        dist.barrier()



def model_parallel(validate: bool = True, **device: Any) -> Callable[[], dict[str, Any]]:
    """A 4-layer run (so 2 ranks x 2 stages divide the layers), validating at the end."""
    validation = {"val_every_n_steps": 4, "val_steps_per_epoch": 2} if validate else {}
    return lambda: run(toy_config(DeviceParameters(**device), n_layers=4, **validation))


SCENARIOS |= {
    "tp": model_parallel(dp_shard=2, tensor_parallel=2),
    "tp_loss_parallel": model_parallel(dp_shard=2, tensor_parallel=2, loss_parallel=True),
    "tp_pp": model_parallel(dp_shard=1, tensor_parallel=2, pipeline_parallel=2),
    "pp_gpipe": model_parallel(dp_shard=2, pipeline_parallel=2, pipeline_schedule="GPipe"),
    "pp_1f1b": model_parallel(dp_shard=2, pipeline_parallel=2, pipeline_schedule="1F1B"),
    "pp_interleaved_1f1b": model_parallel(dp_shard=2, pipeline_parallel=2,
                                          pipeline_schedule="Interleaved1F1B",
                                          pipeline_stages_per_rank=2),
    "pp_zbv": model_parallel(validate=False, dp_shard=2, pipeline_parallel=2, pipeline_schedule="ZBVZeroBubble",
                             pipeline_stages_per_rank=2),
    # GPU only (see test_context_parallel); fp32 so that it compares tightly with one process.
    "cp": model_parallel(dp_shard=1, context_parallel=2, param_dtype=torch.float32),
    "pp_interleaved_zb": model_parallel(dp_shard=2, pipeline_parallel=2,
                                        pipeline_schedule="InterleavedZeroBubble",
                                        pipeline_stages_per_rank=2),
}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
