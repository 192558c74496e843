"""Reference SwiGLU MLP: ``down(silu(gate(x)) * up(x))`` as one op. This code *is* the spec."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.library.custom_op("auto_deploy::torch_swiglu_mlp", mutates_args=())
def torch_swiglu_mlp(
    x: Tensor,
    gate_weight: Tensor,
    up_weight: Tensor,
    down_weight: Tensor,
    gate_bias: Tensor | None = None,
    up_bias: Tensor | None = None,
    down_bias: Tensor | None = None,
) -> Tensor:
    """x: [..., hidden]; gate/up weight: [inter, hidden]; down weight: [hidden_out, inter]."""
    gate = F.linear(x, gate_weight, gate_bias)  # [..., inter]
    up = F.linear(x, up_weight, up_bias)  # [..., inter]
    return F.linear(F.silu(gate) * up, down_weight, down_bias)  # [..., hidden_out]


@torch_swiglu_mlp.register_fake
def _torch_swiglu_mlp_fake(
    x, gate_weight, up_weight, down_weight, gate_bias=None, up_bias=None, down_bias=None
):
    return x.new_empty(*x.shape[:-1], down_weight.shape[0])
