"""Triton rotate-half RoPE for query and key in one launch.

Ops (same semantics as their references):

- ``triton_rope_with_explicit_cos_sin(q, k, cos, sin, unsqueeze_dim)``
  (``torch_rope_with_explicit_cos_sin``): cos/sin given per token, [b, s, r];
- ``triton_rope_with_cos_sin_cache(q, k, position_ids, cos_cache, sin_cache, unsqueeze_dim)``
  (``torch_rope_with_cos_sin_cache``): cos/sin rows looked up by position in [max_pos, r] tables.

Math, per token and head, with rotary width ``r`` (even, ``r <= head_dim``), halves
``x1 = x[:r/2]``, ``x2 = x[r/2:r]`` and the token's ``cos``/``sin`` rows (float32):

    out[:r/2]  = x1 * cos[:r/2] - x2 * sin[:r/2]
    out[r/2:r] = x2 * cos[r/2:] + x1 * sin[r/2:]
    out[r:]    = x[r:]                              (partial rotary: passed through)

which is ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]``. The result is
cast to the input dtype. The grid is (tokens, 2): program (t, 0) rotates every query head of
token t, (t, 1) every key head; both read the token's cos/sin row once.

Layouts: ``unsqueeze_dim=2`` for q/k in [b, s, heads, d] ("bsnd"), 1 for [b, heads, s, d].
Inputs may be strided views (e.g. slices of a fused QKV GEMM) as long as the last dim is
contiguous; outputs are new contiguous tensors. Supported: float16 / bfloat16 / float32 q/k,
cos/sin in any float dtype. CUDA tensors run compiled; CPU tensors only in the Triton
interpreter (``TRITON_INTERPRET=1``, tests).
"""

from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from .._triton_kernel import TritonKernel, next_power_of_2
from .backends import rope_input_problem


def _rope_qk(
    q_ptr,
    k_ptr,
    q_out_ptr,
    k_out_ptr,
    cos_ptr,
    sin_ptr,
    pos_ptr,
    tokens_per_row,
    num_q_heads,
    num_k_heads,
    q_stride_b,
    q_stride_s,
    q_stride_h,
    k_stride_b,
    k_stride_s,
    k_stride_h,
    qo_stride_b,
    qo_stride_s,
    qo_stride_h,
    ko_stride_b,
    ko_stride_s,
    ko_stride_h,
    table_stride_b,
    table_stride_s,
    pos_stride_b,
    pos_stride_s,
    HALF: tl.constexpr,
    PASS: tl.constexpr,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
    USE_POSITIONS: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    b = token // tokens_per_row
    s = token % tokens_per_row
    heads = tl.arange(0, BLOCK_HEADS)[:, None]  # [BLOCK_HEADS, 1]
    if tl.program_id(1) == 0:
        src = q_ptr + b * q_stride_b + s * q_stride_s + heads * q_stride_h
        dst = q_out_ptr + b * qo_stride_b + s * qo_stride_s + heads * qo_stride_h
        head_mask = heads < num_q_heads
    else:
        src = k_ptr + b * k_stride_b + s * k_stride_s + heads * k_stride_h
        dst = k_out_ptr + b * ko_stride_b + s * ko_stride_s + heads * ko_stride_h
        head_mask = heads < num_k_heads

    if USE_POSITIONS:  # row `position` of a dense [max_positions, 2 * HALF] table
        position = tl.load(pos_ptr + b * pos_stride_b + s * pos_stride_s).to(tl.int64)
        row = position * (2 * HALF)
    else:  # the token's own row of a [b, s, 2 * HALF] tensor
        row = b * table_stride_b + s * table_stride_s
    cols = tl.arange(0, BLOCK_HALF)
    col_mask = cols < HALF
    cos1 = tl.load(cos_ptr + row + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    cos2 = tl.load(cos_ptr + row + HALF + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    sin1 = tl.load(sin_ptr + row + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    sin2 = tl.load(sin_ptr + row + HALF + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]

    mask = head_mask & col_mask[None, :]
    x1 = tl.load(src + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    out1 = x1 * cos1 - x2 * sin1
    out2 = x2 * cos2 + x1 * sin2
    tl.store(dst + cols[None, :], out1.to(dst.dtype.element_ty), mask=mask)
    tl.store(dst + HALF + cols[None, :], out2.to(dst.dtype.element_ty), mask=mask)
    if PASS > 0:
        rest = tl.arange(0, BLOCK_PASS)[None, :]
        rest_mask = head_mask & (rest < PASS)
        x_pass = tl.load(src + 2 * HALF + rest, mask=rest_mask, other=0.0)
        tl.store(dst + 2 * HALF + rest, x_pass, mask=rest_mask)


rope_qk_kernel = TritonKernel(_rope_qk)


def _unit_last_stride(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _bsh_strides(x: Tensor, unsqueeze_dim: int) -> tuple[int, int, int]:
    """(batch, seq, head) strides of q/k in either layout."""
    seq_dim, head_dim = (1, 2) if unsqueeze_dim == 2 else (2, 1)
    return x.stride(0), x.stride(seq_dim), x.stride(head_dim)


def _rope(
    name: str,
    q: Tensor,
    k: Tensor,
    cos: Tensor,
    sin: Tensor,
    positions: Tensor | None,
    unsqueeze_dim: int,
) -> tuple[Tensor, Tensor]:
    if unsqueeze_dim not in (1, 2) or q.dim() != 4 or k.dim() != 4:
        raise ValueError(
            f"{name}: q/k must be 4-D with unsqueeze_dim 1 ([b, n, s, d]) or 2 "
            f"([b, s, n, d]); got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"unsqueeze_dim={unsqueeze_dim}."
        )
    problem = rope_input_problem(q, k)
    if problem is not None:
        raise ValueError(f"{name}: {problem}.")
    head_dim, rotary_dim = q.shape[-1], cos.shape[-1]
    if k.shape[-1] != head_dim or rotary_dim % 2 or rotary_dim > head_dim or sin.shape != cos.shape:
        raise ValueError(
            f"{name}: rotary width {rotary_dim} (cos {tuple(cos.shape)}, sin "
            f"{tuple(sin.shape)}) must be even and <= head_dim of q and k "
            f"({head_dim}, {k.shape[-1]})."
        )
    seq_dim, heads_dim = (1, 2) if unsqueeze_dim == 2 else (2, 1)
    batch, seq = q.shape[0], q.shape[seq_dim]
    if (k.shape[0], k.shape[seq_dim]) != (batch, seq):
        raise ValueError(
            f"{name}: q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch/sequence sizes."
        )
    q, k = _unit_last_stride(q), _unit_last_stride(k)
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if positions is None:
        cos, sin = cos.expand(batch, seq, rotary_dim), sin.expand(batch, seq, rotary_dim)
        if cos.stride() != sin.stride() or cos.stride(-1) != 1:
            cos, sin = cos.contiguous(), sin.contiguous()
        table_strides, pos_strides = (cos.stride(0), cos.stride(1)), (0, 0)
        positions = cos  # unused by the kernel
    else:
        cos, sin = cos.contiguous(), sin.contiguous()
        positions = positions.expand(batch, seq)
        table_strides, pos_strides = (0, 0), (positions.stride(0), positions.stride(1))
    if batch * seq == 0:
        return q_out, k_out
    half, num_heads = rotary_dim // 2, max(q.shape[heads_dim], k.shape[heads_dim])
    block_heads, block_half = next_power_of_2(num_heads), next_power_of_2(half)
    rope_qk_kernel[(batch * seq, 2), q.device](
        q,
        k,
        q_out,
        k_out,
        cos,
        sin,
        positions,
        seq,
        q.shape[heads_dim],
        k.shape[heads_dim],
        *_bsh_strides(q, unsqueeze_dim),
        *_bsh_strides(k, unsqueeze_dim),
        *_bsh_strides(q_out, unsqueeze_dim),
        *_bsh_strides(k_out, unsqueeze_dim),
        *table_strides,
        *pos_strides,
        HALF=half,
        PASS=head_dim - rotary_dim,
        BLOCK_HEADS=block_heads,
        BLOCK_HALF=block_half,
        BLOCK_PASS=next_power_of_2(max(head_dim - rotary_dim, 1)),
        USE_POSITIONS=positions is not cos,
        num_warps=4 if block_heads * block_half <= 4096 else 8,
    )
    return q_out, k_out


@torch.library.custom_op("auto_deploy::triton_rope_with_explicit_cos_sin", mutates_args=())
def triton_rope_with_explicit_cos_sin(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, unsqueeze_dim: int = 1
) -> tuple[Tensor, Tensor]:
    """``torch_rope_with_explicit_cos_sin`` in one launch. cos, sin: [b, s, r] (broadcastable)."""
    return _rope("triton_rope_with_explicit_cos_sin", q, k, cos, sin, None, unsqueeze_dim)


@triton_rope_with_explicit_cos_sin.register_fake
def _rope_explicit_fake(q, k, cos, sin, unsqueeze_dim=1):
    return q.new_empty(q.shape), k.new_empty(k.shape)


@torch.library.custom_op("auto_deploy::triton_rope_with_cos_sin_cache", mutates_args=())
def triton_rope_with_cos_sin_cache(
    q: Tensor,
    k: Tensor,
    position_ids: Tensor,
    cos_cache: Tensor,
    sin_cache: Tensor,
    unsqueeze_dim: int = 2,
) -> tuple[Tensor, Tensor]:
    """``torch_rope_with_cos_sin_cache`` in one launch. position_ids: [b, s]; tables [P, r].

    Positions are not bounds-checked on the device (that would cost a sync per step): the
    runtime keeps them below ``max_seq_len``, the number of rows ``optimize_rope`` builds.
    """
    return _rope(
        "triton_rope_with_cos_sin_cache", q, k, cos_cache, sin_cache, position_ids, unsqueeze_dim
    )


@triton_rope_with_cos_sin_cache.register_fake
def _rope_cache_fake(q, k, position_ids, cos_cache, sin_cache, unsqueeze_dim=2):
    return q.new_empty(q.shape), k.new_empty(k.shape)
