"""DistributedWorld: one object that knows the process group, the device and every mesh view."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from dream_trainer.configs.device import MESH_DIMS, DeviceParameters, ParallelDims

logger = logging.getLogger(__name__)

_FLATTENED = {
    "dp": ("dp_replicate", "dp_shard"),
    "dp_shard_cp": ("dp_shard", "cp"),
    "dp_cp": ("dp_replicate", "dp_shard", "cp"),
}
"""Flattened views: ``dp`` splits the data, ``dp_shard_cp`` is what FSDP shards parameters over
(CP ranks hold different tokens of the same samples, so they shard weights like dp ranks),
``dp_cp`` is what gradients are averaged over."""


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set the standard rendezvous environment."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


class DistributedWorld:
    """The process group, the device and the DeviceMesh with dims ``pp, dp_replicate, dp_shard,
    cp, tp`` (outermost first), plus the flattened views ``dp``, ``dp_shard_cp`` and ``dp_cp``.

    Started under torchrun it joins the rendezvous from the environment; started as a plain
    process it forms a world of one, so the same code path (meshes, FSDP, DTensors) runs
    everywhere. CUDA devices get NCCL, CPUs get gloo.
    """

    def __init__(self, device_parameters: DeviceParameters) -> None:
        self.device_parameters = device_parameters
        self.device, self.backend = self._pick_device()
        self._owns_process_group = self._init_process_group()
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.dims: ParallelDims = device_parameters.resolve(self.size)
        self.mesh: DeviceMesh = init_device_mesh(
            self.device.type, self.dims.shape, mesh_dim_names=MESH_DIMS
        )
        self._views = {name: self.mesh[dims]._flatten(name) for name, dims in _FLATTENED.items()}
        param_dtype = device_parameters.param_dtype
        if param_dtype is None:
            param_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.param_dtype: torch.dtype = param_dtype
        self.cpu_offload = device_parameters.cpu_offload and self.device.type != "cpu"
        if device_parameters.cpu_offload and not self.cpu_offload:
            # The same config should run on a laptop: without an accelerator there is nothing to
            # offload from, and FSDP2's offload policy would fail.
            logger.warning("DeviceParameters.cpu_offload=True ignored: no accelerator, "
                           "parameters already live on the CPU")
        logger.info("world rank=%d size=%d device=%s dims=%s", self.rank, self.size, self.device,
                    self.dims)

    # ----------------------------------------------------------------- setup / teardown
    def _pick_device(self) -> tuple[torch.device, str]:
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local_rank)
            return torch.device("cuda", local_rank), "nccl"
        return torch.device("cpu"), "gloo"

    def _init_process_group(self) -> bool:
        """Join (or form) the process group; returns whether this world created it."""
        if dist.is_initialized():
            return False
        if launched_by_torchrun():
            device_id = self.device if self.device.type == "cuda" else None
            dist.init_process_group(self.backend, device_id=device_id)
        else:
            # A world of one needs no rendezvous: an in-memory store is enough.
            dist.init_process_group(self.backend, store=dist.HashStore(), rank=0, world_size=1)
        atexit.register(self.shutdown)
        return True

    def shutdown(self) -> None:
        """Destroy the process group if this world created it. Safe to call more than once."""
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_process_group = False

    # ----------------------------------------------------------------------- meshes
    def get_mesh(self, name: str) -> DeviceMesh:
        """A 1-D mesh view: one of ``pp, dp_replicate, dp_shard, cp, tp, dp, dp_shard_cp, dp_cp``."""
        if name in self._views:
            return self._views[name]
        if name in MESH_DIMS:
            return self.mesh[name]
        raise KeyError(f"unknown mesh {name!r}; known: {MESH_DIMS + tuple(self._views)}")

    @property
    def pp_mesh(self) -> DeviceMesh:
        return self.get_mesh("pp")

    @property
    def tp_mesh(self) -> DeviceMesh:
        return self.get_mesh("tp")

    @property
    def cp_mesh(self) -> DeviceMesh:
        return self.get_mesh("cp")

    @property
    def dp_mesh(self) -> DeviceMesh:
        """The data-parallel ranks (replicas x shards): each sees different samples."""
        return self.get_mesh("dp")

    @property
    def fsdp_mesh(self) -> DeviceMesh:
        """The mesh FSDP2 shards over: 1-D ``dp_shard_cp``, or 2-D ``(dp_replicate, dp_shard_cp)``
        for HSDP, where ``fully_shard`` replicates over the first dim and shards over the second."""
        if self.dims.dp_replicate > 1:
            if self.dims.cp == 1:
                return self.mesh["dp_replicate", "dp_shard"]
            return self.mesh["dp_replicate", "dp_shard_cp"]
        return self.get_mesh("dp_shard_cp")

    @property
    def dp_size(self) -> int:
        return self.dims.dp

    @property
    def dp_rank(self) -> int:
        return self.dp_mesh.get_local_rank()

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    # --------------------------------------------------------------------- helpers
    def barrier(self) -> None:
        dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor, mesh: str = "dp_cp") -> torch.Tensor:
        """Mean of ``tensor`` over a mesh view; returns a copy. The default, ``dp_cp``, spans the
        ranks that see different data (different samples, or different tokens under CP), so a
        per-rank mean loss becomes the global mean loss."""
        group_mesh = self.get_mesh(mesh)
        out = tensor.detach().clone()
        if group_mesh.size() > 1:
            dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group_mesh.get_group())
            out /= group_mesh.size()
        return out

    @contextlib.contextmanager
    def train_context(self) -> Iterator[None]:
        """Autocast for models that FSDP's mixed-precision policy does not cover (DDP, one device)."""
        if self.param_dtype == torch.float32 or self.dims.fsdp_enabled:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.param_dtype):
            yield

    def loss_parallel(self) -> contextlib.AbstractContextManager[None]:
        """``torch.distributed.tensor.parallel.loss_parallel`` when enabled, else a no-op."""
        if self.device_parameters.loss_parallel and self.dims.tp > 1:
            from torch.distributed.tensor.parallel import loss_parallel

            return loss_parallel()
        return contextlib.nullcontext()
