"""DeviceParameters: how a job is spread over devices, and how each device computes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from dream_trainer.configs.errors import (
    ConfigError,
    require_bool,
    require_choice,
    require_int,
)

Degree = int | Literal["auto"]

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
"""The DeviceMesh dimension names, outermost first. Outer dims cross nodes (slow links); tp is
innermost so that its heavy per-layer collectives stay on the fastest link."""

_DEGREE_FIELDS = {
    "pp": "pipeline_parallel",
    "dp_replicate": "dp_replicate",
    "dp_shard": "dp_shard",
    "cp": "context_parallel",
    "tp": "tensor_parallel",
}


@dataclass(frozen=True)
class ParallelDims:
    """The resolved, concrete degree of every mesh dimension for one world size."""

    pp: int
    dp_replicate: int
    dp_shard: int
    cp: int
    tp: int

    @property
    def world_size(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.cp * self.tp

    @property
    def dp(self) -> int:
        """Number of distinct data-parallel batches (replicas x shards)."""
        return self.dp_replicate * self.dp_shard

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(getattr(self, d) for d in MESH_DIMS)

    @property
    def fsdp_enabled(self) -> bool:
        """Parameters are sharded over dp_shard (and cp, which FSDP shards over too)."""
        return self.dp_shard * self.cp > 1

    @property
    def ddp_enabled(self) -> bool:
        """Pure replication: DDP-style all-reduce with no sharding."""
        return self.dp_replicate > 1 and not self.fsdp_enabled


@dataclass(kw_only=True)
class DeviceParameters:
    """Parallelism degrees and per-device compute settings.

    Each degree is a positive int or ``"auto"`` (at most one), which takes whatever the world size
    leaves. ``dp_shard`` > 1 shards parameters (FSDP2); ``dp_replicate`` > 1 with ``dp_shard`` == 1
    replicates them (DDP); both > 1 is HSDP. Use the presets :meth:`FSDP`, :meth:`HSDP`,
    :meth:`DDP` and :meth:`SINGLE_DEVICE` for the common cases.
    """

    dp_replicate: Degree = 1
    dp_shard: Degree = "auto"
    tensor_parallel: Degree = 1
    pipeline_parallel: Degree = 1
    context_parallel: Degree = 1

    param_dtype: torch.dtype | None = None
    """Compute dtype of parameters. None: bfloat16 on CUDA, float32 on CPU."""
    reduce_dtype: torch.dtype = torch.float32
    """Dtype of gradient reductions across data-parallel ranks."""
    cpu_offload: bool = False
    """Keep sharded parameters and optimizer state on CPU (FSDP2 ``CPUOffloadPolicy``)."""
    reshard_after_forward: bool = True
    """Free gathered parameters after forward (ZeRO-3); False keeps them until backward (ZeRO-2)."""

    compile_model: bool = False
    """torch.compile each repeated block (``apply_compile``)."""
    enable_compiled_autograd: bool = False
    """Capture backward with compiled autograd (needs ``compile_model``)."""
    checkpoint_activations: bool = False
    """Recompute activations in backward (``apply_activation_checkpointing``)."""
    activation_checkpointing_mode: Literal["full", "selective"] = "full"
    """``full`` recomputes whole blocks; ``selective`` keeps matmul and attention outputs."""
    async_tensor_parallel: bool = False
    """Overlap TP communication with compute (CUDA with symmetric memory, and compile)."""
    loss_parallel: bool = False
    """Compute the loss on vocabulary-sharded logits without gathering them (TP > 1)."""

    pipeline_schedule: str = "1F1B"
    """A ``torch.distributed.pipelining`` schedule: GPipe, 1F1B, Interleaved1F1B, LoopedBFS,
    InterleavedZeroBubble, ZBVZeroBubble, DualPipeV."""
    pipeline_stages_per_rank: int = 1
    """Stages each pipeline rank holds (2+ for interleaved and V-shaped schedules)."""
    pipeline_microbatches: int | None = None
    """Micro-batches per pipeline step; None: the number of stages."""
    context_parallel_rotate_method: Literal["allgather", "alltoall"] = "allgather"
    """How context-parallel attention exchanges key/value shards."""

    def __post_init__(self) -> None:
        degrees = {name: getattr(self, name) for name in _DEGREE_FIELDS.values()}
        for name, degree in degrees.items():
            if degree != "auto":
                require_int(f"DeviceParameters.{name}", degree, minimum=1)
        autos = [name for name, degree in degrees.items() if degree == "auto"]
        if len(autos) > 1:
            raise ConfigError(f"DeviceParameters.{autos[1]}", "auto",
                              f"only one degree may be 'auto' but {autos} all are",
                              "give every degree but one an integer")
        for name in ("cpu_offload", "reshard_after_forward", "compile_model",
                     "enable_compiled_autograd", "checkpoint_activations",
                     "async_tensor_parallel", "loss_parallel"):
            require_bool(f"DeviceParameters.{name}", getattr(self, name))
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            if not (value is None and name == "param_dtype") and not isinstance(value, torch.dtype):
                raise ConfigError(f"DeviceParameters.{name}", value, "expected a torch.dtype",
                                  "pass e.g. torch.bfloat16 or torch.float32")
        require_choice("DeviceParameters.activation_checkpointing_mode",
                       self.activation_checkpointing_mode, ("full", "selective"))
        require_choice("DeviceParameters.context_parallel_rotate_method",
                       self.context_parallel_rotate_method, ("allgather", "alltoall"))
        require_int("DeviceParameters.pipeline_stages_per_rank", self.pipeline_stages_per_rank,
                    minimum=1)
        require_int("DeviceParameters.pipeline_microbatches", self.pipeline_microbatches,
                    minimum=1, allow_none=True)
        if self.enable_compiled_autograd and not self.compile_model:
            raise ConfigError("DeviceParameters.enable_compiled_autograd", True,
                              "compiled autograd compiles backward; it needs compile_model=True",
                              "set compile_model=True or enable_compiled_autograd=False")
        if self.async_tensor_parallel and self.tensor_parallel == 1:
            raise ConfigError("DeviceParameters.async_tensor_parallel", True,
                              "async TP needs tensor_parallel > 1",
                              "set tensor_parallel > 1 or async_tensor_parallel=False")
        if self.loss_parallel and self.tensor_parallel == 1:
            raise ConfigError("DeviceParameters.loss_parallel", True,
                              "loss parallel shards the loss over the TP mesh, but tensor_parallel=1",
                              "set tensor_parallel > 1 or loss_parallel=False")
        if self.async_tensor_parallel and not self.compile_model:
            raise ConfigError("DeviceParameters.async_tensor_parallel", True,
                              "async TP is a compiler pass; it needs compile_model=True",
                              "set compile_model=True or async_tensor_parallel=False")

    def resolve(self, world_size: int) -> ParallelDims:
        """Concrete degrees for ``world_size``; raises ConfigError naming the fields that disagree."""
        degrees = {dim: getattr(self, name) for dim, name in _DEGREE_FIELDS.items()}
        fixed = math.prod(d for d in degrees.values() if d != "auto")
        auto = [dim for dim, d in degrees.items() if d == "auto"]
        described = ", ".join(f"{_DEGREE_FIELDS[d]}={v}" for d, v in degrees.items())
        if auto:
            if world_size % fixed:
                raise ConfigError(f"DeviceParameters.{_DEGREE_FIELDS[auto[0]]}", "auto",
                                  f"world size {world_size} is not divisible by the product "
                                  f"{fixed} of the other degrees ({described})",
                                  f"launch a multiple of {fixed} processes or change the degrees")
            degrees[auto[0]] = world_size // fixed
        elif fixed != world_size:
            raise ConfigError("DeviceParameters", described,
                              f"the degrees multiply to {fixed} but the world size is {world_size}",
                              f"make the product equal {world_size}, or set one degree to 'auto'")
        return ParallelDims(**degrees)

    # Presets. Each takes any other field as a keyword override.
    @classmethod
    def FSDP(cls, **overrides: Any) -> DeviceParameters:
        """Shard parameters over every data-parallel rank (FSDP2 / ZeRO-3)."""
        return cls(**{"dp_replicate": 1, "dp_shard": "auto", **overrides})

    @classmethod
    def HSDP(cls, dp_shard: int, **overrides: Any) -> DeviceParameters:
        """Shard within groups of ``dp_shard`` ranks (e.g. a node) and replicate across groups."""
        return cls(**{"dp_replicate": "auto", "dp_shard": dp_shard, **overrides})

    @classmethod
    def DDP(cls, **overrides: Any) -> DeviceParameters:
        """Replicate parameters on every rank and all-reduce gradients."""
        return cls(**{"dp_replicate": "auto", "dp_shard": 1, **overrides})

    @classmethod
    def SINGLE_DEVICE(cls, **overrides: Any) -> DeviceParameters:
        """One process, no parallelism."""
        return cls(**{"dp_replicate": 1, "dp_shard": 1, **overrides})
