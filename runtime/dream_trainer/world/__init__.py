"""The distributed world: process group, device and DeviceMesh."""

from dream_trainer.world.distributed_world import DistributedWorld

__all__ = ["DistributedWorld"]
