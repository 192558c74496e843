"""FlashInfer RMSNorm: ``flashinfer_rmsnorm`` (CUDA only; needs ``flashinfer-python``).

Same semantics as ``torch_rmsnorm`` up to rounding: FlashInfer scales by the weight before the
single cast to the output dtype, where the reference rounds the normalized value first, so
fp16/bf16 results may differ from the reference by one unit in the last place. This module is
skipped (the op is not registered) when flashinfer is not installed; ``fuse_rmsnorm`` then
refuses ``backend: flashinfer`` with an error that says so.
"""

from __future__ import annotations

import flashinfer
import torch
from torch import Tensor


@torch.library.custom_op("auto_deploy::flashinfer_rmsnorm", mutates_args=())
def flashinfer_rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``torch_rmsnorm`` through ``flashinfer.norm.rmsnorm``. x: [..., hidden] on CUDA."""
    if not x.is_cuda:
        raise ValueError(f"flashinfer_rmsnorm runs on CUDA tensors only, got {x.device}.")
    hidden = x.shape[-1]
    rows = x.reshape(-1, hidden).contiguous()  # FlashInfer wants dense [rows, hidden]
    out = flashinfer.norm.rmsnorm(rows, weight.to(x.dtype), eps)
    return out.view(x.shape)


@flashinfer_rmsnorm.register_fake
def _flashinfer_rmsnorm_fake(x, weight, eps):
    return x.new_empty(x.shape)
