"""Reference linear op: one opaque node for ``F.linear`` (custom models and export patches use it
so the graph keeps a single node instead of view/matmul chains)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.library.custom_op("auto_deploy::torch_linear_simple", mutates_args=())
def torch_linear_simple(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias``. x: [..., in], weight: [out, in], bias: [out] -> [..., out]."""
    return F.linear(x, weight, bias)


@torch_linear_simple.register_fake
def _torch_linear_simple_fake(x, weight, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0])
