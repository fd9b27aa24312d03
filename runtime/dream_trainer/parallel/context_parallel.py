"""Context parallelism: shard the sequence over the cp mesh inside attention."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch.distributed.device_mesh import DeviceMesh


def context_parallel(cp_mesh: DeviceMesh, buffers: Sequence[torch.Tensor],
                     seq_dims: Sequence[int], no_restore: Sequence[torch.Tensor] = (),
                     rotate_method: str = "allgather") -> contextlib.AbstractContextManager:
    """A context in which ``buffers`` are sharded in place along ``seq_dims`` over ``cp_mesh``
    and SDPA runs ring attention across the shards. Sharding is load-balanced for causal
    attention: each rank gets one chunk from the head and one from the tail of the sequence, so
    no rank holds only the expensive late positions (which is why the sequence must divide by
    2·cp). Forward and backward must both run inside. ``no_restore`` buffers (the batch) are not
    copied back afterwards."""
    from torch.distributed.tensor.experimental import context_parallel as torch_cp
    from torch.distributed.tensor.experimental._attention import set_rotate_method

    set_rotate_method(rotate_method)
    return torch_cp(cp_mesh, buffers=list(buffers), buffer_seq_dims=list(seq_dims),
                    no_restore_buffers=set(no_restore))
