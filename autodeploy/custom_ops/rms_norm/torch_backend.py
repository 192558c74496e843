"""Reference normalization ops. The code below *is* the specification of their semantics.

Each normalizes over the last dimension in float32 and returns the input's dtype and shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _rms_normalize(x32: Tensor, eps: float) -> Tensor:
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)


@torch.library.custom_op("auto_deploy::torch_rmsnorm", mutates_args=())
def torch_rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``weight * (x / sqrt(mean(x^2) + eps))``; the normalization runs in float32 (HF order:
    normalize in fp32, cast to the input dtype, then scale). x: [..., hidden], weight: [hidden]."""
    if x.dtype == weight.dtype == torch.float32:  # no casts: the same math as one torch call
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    normed = _rms_normalize(x.float(), eps).to(x.dtype)
    return (weight * normed).to(x.dtype)


@torch_rmsnorm.register_fake
def _torch_rmsnorm_fake(x, weight, eps):
    return torch.empty_like(x)


@torch.library.custom_op("auto_deploy::torch_rmsnorm_gated", mutates_args=())
def torch_rmsnorm_gated(
    x: Tensor,
    weight: Tensor,
    gate: Tensor | None,
    eps: float,
    group_size: int,
    norm_before_gate: bool = False,
) -> Tensor:
    """Mamba-2 gated RMSNorm over groups of ``group_size`` channels.

    norm_before_gate=False (HF Mamba-2): ``norm(x * silu(gate)) * weight``;
    norm_before_gate=True: ``norm(x) * weight * silu(gate)``. group_size == hidden is plain RMSNorm.
    x, gate: [..., hidden]; weight: [hidden].
    """
    x32 = x.float()
    if gate is not None and not norm_before_gate:
        x32 = x32 * F.silu(gate.float())
    groups = x32.reshape(*x32.shape[:-1], -1, group_size)  # [..., hidden / group_size, group_size]
    y = _rms_normalize(groups, eps).reshape(x32.shape)
    if gate is not None and norm_before_gate:
        y = y * F.silu(gate.float())
    return (weight * y.to(x.dtype)).to(x.dtype)


@torch_rmsnorm_gated.register_fake
def _torch_rmsnorm_gated_fake(x, weight, gate, eps, group_size, norm_before_gate=False):
    return torch.empty_like(x)


@torch.library.custom_op("auto_deploy::torch_l2norm", mutates_args=())
def torch_l2norm(x: Tensor, eps: float) -> Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dim, in float32 (FLA / Qwen3-Next style)."""
    x32 = x.float()
    return (x32 * torch.rsqrt((x32 * x32).sum(-1, keepdim=True) + eps)).to(x.dtype)


@torch_l2norm.register_fake
def _torch_l2norm_fake(x, eps):
    return torch.empty_like(x)
