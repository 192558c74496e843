"""Reference fused residual add + RMSNorm. The code below *is* the specification.

A decoder layer ends with ``hidden = residual + hidden`` and the next one starts by normalizing
that sum while keeping it as the new residual. One op returns both, so a kernel can read the two
inputs once and write both outputs in the same pass (``fuse_add_rms_norm``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .torch_backend import torch_rmsnorm


@torch.library.custom_op("auto_deploy::torch_fused_add_rmsnorm", mutates_args=())
def torch_fused_add_rmsnorm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """``added = x + residual`` (in their dtype, as the eager add), then
    ``normed = torch_rmsnorm(added, weight, eps)``. Returns ``(normed, added)``.

    x, residual: [..., hidden] (same shape and dtype); weight: [hidden].
    """
    added = x + residual
    return torch_rmsnorm(added, weight, eps), added


@torch_fused_add_rmsnorm.register_fake
def _torch_fused_add_rmsnorm_fake(x, residual, weight, eps):
    return torch.empty_like(x), torch.empty_like(x)
