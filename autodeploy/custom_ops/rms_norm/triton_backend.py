"""Triton RMSNorm: ``triton_rmsnorm`` and ``triton_fused_add_rmsnorm``.

Same semantics as the reference ops ``torch_rmsnorm`` and ``torch_fused_add_rmsnorm``. One
program normalizes one row ``x`` of ``H`` channels (the whole row sits in registers):

    added  = round(x + residual)                      (fused op only; written out as well)
    ms     = (1 / H) * sum_j x_j^2                    (float32 accumulation)
    normed = round(x_j / sqrt(ms + eps))
    out_j  = round(weight_j * normed_j)

``round`` is the cast to the input dtype. Rounding ``normed`` before the scale follows Hugging
Face's order (normalize in float32, cast, then multiply by the weight), so fp16/bf16 results
match the eager model's rounding, not just its math.

Supported: float16 / bfloat16 / float32 inputs, hidden size up to ``TRITON_MAX_HIDDEN``
(``backends.py``), any number of rows, any leading shape (rows are made contiguous in the last
dim if they are not). CUDA tensors run compiled; CPU tensors only in the Triton interpreter
(``TRITON_INTERPRET=1``, tests).
"""

from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from .._triton_kernel import SUM_COMBINE, TritonKernel, next_power_of_2
from .backends import TRITON_DTYPES, TRITON_MAX_HIDDEN, rmsnorm_input_problem


def _rmsnorm_rows(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    added_ptr,
    x_row_stride,
    residual_row_stride,
    out_row_stride,
    added_row_stride,
    hidden,
    eps,
    BLOCK: tl.constexpr,
    ADD_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    if ADD_RESIDUAL:
        residual = tl.load(residual_ptr + row * residual_row_stride + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(added_ptr.dtype.element_ty)
        tl.store(added_ptr + row * added_row_stride + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    mean_square = tl.reduce(x32 * x32, 0, SUM_COMBINE) / hidden
    normed = (x32 * tl.rsqrt(mean_square + eps)).to(out_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    out = normed.to(tl.float32) * weight.to(tl.float32)
    tl.store(out_ptr + row * out_row_stride + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


rmsnorm_rows_kernel = TritonKernel(_rmsnorm_rows)


def _as_rows(x: Tensor, hidden: int) -> Tensor:
    """[..., hidden] -> [rows, hidden] with unit stride in the last dim (a view when possible)."""
    rows = x.reshape(-1, hidden)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _check(name: str, x: Tensor, weight: Tensor) -> int:
    hidden = x.shape[-1]
    problem = rmsnorm_input_problem(x, TRITON_DTYPES, TRITON_MAX_HIDDEN)
    if problem is not None:
        raise ValueError(f"{name}: {problem}; use the torch backend.")
    if weight.shape != (hidden,):
        raise ValueError(f"{name}: weight has shape {tuple(weight.shape)}, expected ({hidden},).")
    if weight.device != x.device:
        raise ValueError(f"{name}: weight is on {weight.device}, x on {x.device}.")
    return hidden


def _num_warps(block: int) -> int:
    return 4 if block <= 2048 else (8 if block <= 8192 else 16)


def _launch(x: Tensor, residual: Tensor | None, weight: Tensor, eps: float, name: str):
    hidden = _check(name, x, weight)
    x_rows = _as_rows(x, hidden)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out_rows = out.view(-1, hidden)
    if residual is None:
        residual_rows, added, added_rows = x_rows, None, out_rows  # unused by the kernel
    else:
        residual_rows = _as_rows(residual, hidden)
        added = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        added_rows = added.view(-1, hidden)
    num_rows = x_rows.shape[0]
    if num_rows > 0:
        block = next_power_of_2(hidden)
        rmsnorm_rows_kernel[(num_rows,), x.device](
            x_rows,
            residual_rows,
            weight,
            out_rows,
            added_rows,
            x_rows.stride(0),
            residual_rows.stride(0),
            out_rows.stride(0),
            added_rows.stride(0),
            hidden,
            float(eps),
            BLOCK=block,
            ADD_RESIDUAL=residual is not None,
            num_warps=_num_warps(block),
        )
    return out, added


@torch.library.custom_op("auto_deploy::triton_rmsnorm", mutates_args=())
def triton_rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``torch_rmsnorm`` in one Triton kernel. x: [..., hidden], weight: [hidden]."""
    return _launch(x, None, weight, eps, "triton_rmsnorm")[0]


@triton_rmsnorm.register_fake
def _triton_rmsnorm_fake(x, weight, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op("auto_deploy::triton_fused_add_rmsnorm", mutates_args=())
def triton_fused_add_rmsnorm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """``torch_fused_add_rmsnorm`` in one Triton kernel: returns ``(normed, x + residual)``."""
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(
            f"triton_fused_add_rmsnorm: residual {tuple(residual.shape)}/{residual.dtype} must "
            f"match x {tuple(x.shape)}/{x.dtype}."
        )
    normed, added = _launch(x, residual, weight, eps, "triton_fused_add_rmsnorm")
    return normed, added


@triton_fused_add_rmsnorm.register_fake
def _triton_fused_add_rmsnorm_fake(x, residual, weight, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)
