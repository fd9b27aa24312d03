"""The global gradient norm over sharded parameters, and clipping by it."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor


@torch.no_grad()
def clip_grad_norm_(
    parameters: Iterable[torch.Tensor],
    max_norm: float | None,
    pp_mesh: DeviceMesh | None = None,
) -> torch.Tensor:
    """Compute the L2 norm of all gradients as if they were one unsharded tensor; clip to
    ``max_norm`` when given; return the norm.

    With FSDP/TP the gradients are DTensors and the per-rank norm is a partial sum, so the norm
    is a DTensor that ``full_tensor()`` reduces over the mesh. Pipeline stages hold disjoint
    parameters, so their squared norms are summed over ``pp_mesh`` as well.
    """
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params]
    if not grads:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    if pp_mesh is not None and pp_mesh.size() > 1:
        squared = total**2
        dist.all_reduce(squared, op=dist.ReduceOp.SUM, group=pp_mesh.get_group())
        total = squared.sqrt()
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
    return total
