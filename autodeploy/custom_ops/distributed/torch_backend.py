"""Collectives over ``torch.distributed`` as canonical ops, so they survive export, the later
transforms and CUDA-graph capture as single graph nodes.

Both act on the default (world) process group, which ``autodeploy.distributed`` creates with
NCCL on CUDA and gloo on CPU. Without an initialized process group (a single rank) they are
identities, so a sharded graph also runs, unsplit, in one process for inspection.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.library.custom_op("auto_deploy::torch_dist_all_reduce", mutates_args=())
def torch_dist_all_reduce(x: Tensor) -> Tensor:
    """Sum of ``x`` over every rank. x: [...] -> [...] (a new tensor; ``x`` is not changed)."""
    out = x.clone()  # custom ops must not return (or modify) their input
    if _world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch_dist_all_reduce.register_fake
def _torch_dist_all_reduce_fake(x: Tensor) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("auto_deploy::torch_dist_all_gather", mutates_args=())
def torch_dist_all_gather(x: Tensor, dim: int, world_size: int) -> Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order.

    x: [..., n, ...] -> [..., world_size * n, ...]. ``world_size`` is part of the call so the
    fake (shape) implementation does not depend on process-group state.
    """
    actual = _world_size()
    if actual == 1:
        return torch.cat([x] * world_size, dim=dim) if world_size > 1 else x.clone()
    if actual != world_size:
        raise RuntimeError(
            f"torch_dist_all_gather was built for {world_size} ranks but the process group has "
            f"{actual}; rebuild the model for this world size."
        )
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)


@torch_dist_all_gather.register_fake
def _torch_dist_all_gather_fake(x: Tensor, dim: int, world_size: int) -> Tensor:
    shape = list(x.shape)
    shape[dim] = shape[dim] * world_size
    return x.new_empty(shape)
