"""DistributedWorld as a plain single process."""

from __future__ import annotations

import torch

from dream_trainer.configs import DeviceParameters
from dream_trainer.world import DistributedWorld


def test_single_process_world_has_every_mesh_view() -> None:
    world = DistributedWorld(DeviceParameters.FSDP())
    assert (world.rank, world.size, world.dp_size, world.dp_rank) == (0, 1, 1, 0)
    assert world.is_global_zero
    assert world.device == torch.device("cpu") and world.backend == "gloo"
    for name in ("pp", "dp_replicate", "dp_shard", "cp", "tp", "dp", "dp_shard_cp", "dp_cp"):
        assert world.get_mesh(name).size() == 1
    assert world.param_dtype == torch.float32  # bf16 only by default on CUDA
    mean = world.all_reduce_mean(torch.tensor([2.0, 4.0]))
    assert mean.tolist() == [2.0, 4.0]


def test_unknown_mesh_name_lists_the_known_ones() -> None:
    world = DistributedWorld(DeviceParameters.SINGLE_DEVICE())
    try:
        world.get_mesh("fsdp")
    except KeyError as err:
        assert "dp_shard_cp" in str(err)
    else:
        raise AssertionError("expected KeyError")
