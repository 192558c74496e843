"""Triton kernel: write the new tokens' keys and values into the paged KV cache.

A separate launch (rather than folding the write into the attention kernels) keeps the
attention kernels read-only on the cache: a prefill tile then reads its own sequence's new keys
from the cache exactly like the cached ones, whatever tile or page boundaries they straddle.
"""

from __future__ import annotations

import triton.language as tl

from .._triton_kernel import TritonKernel


def _kv_append_kernel(
    k_ptr,
    v_ptr,
    kv_cache_ptr,
    cu_seqlen_ptr,
    input_pos_ptr,
    cache_loc_ptr,
    cu_num_pages_ptr,
    stride_k_token,
    stride_k_head,
    stride_v_token,
    stride_v_head,
    stride_cache_page,
    stride_cache_kv,
    stride_cache_head,
    stride_cache_row,
    NUM_KV_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """kv_cache[page(p), 0/1, h, p % PAGE_SIZE, :] = k/v[token, h, :] for every new token.

    Grid: (num_seqs, cdiv(max_new_tokens, BLOCK_T)). Program (i, b) copies the new tokens t in
    [b * BLOCK_T, (b + 1) * BLOCK_T) of sequence i (t < seq_len[i]), at positions
    p = input_pos[i] + t, for all kv heads: a [BLOCK_T, HEADS_PAD * BLOCK_D] tile whose column
    c is head c // BLOCK_D, channel c % BLOCK_D. Page of p: cache_loc[cu_num_pages[i] +
    p // PAGE_SIZE]. Shapes: k, v [total_tokens, NUM_KV_HEADS, HEAD_DIM] (last dim
    contiguous); values are cast to the cache dtype.
    """
    seq = tl.program_id(0)
    block = tl.program_id(1)

    first_token = tl.load(cu_seqlen_ptr + seq)
    seq_len = tl.load(cu_seqlen_ptr + seq + 1) - first_token
    t = block * BLOCK_T + tl.arange(0, BLOCK_T)  # [T] new-token index within the sequence
    t_mask = t < seq_len
    cols = tl.arange(0, HEADS_PAD * BLOCK_D)
    head = cols // BLOCK_D
    d = cols % BLOCK_D
    mask = t_mask[:, None] & ((head < NUM_KV_HEADS) & (d < HEAD_DIM))[None, :]  # [T, C]

    positions = tl.load(input_pos_ptr + seq) + t
    page_base = tl.load(cu_num_pages_ptr + seq)
    page = tl.load(cache_loc_ptr + page_base + positions // PAGE_SIZE, mask=t_mask, other=0)
    row_offset = (
        page.to(tl.int64) * stride_cache_page
        + (positions % PAGE_SIZE).to(tl.int64) * stride_cache_row
    )  # [T]
    dst = kv_cache_ptr + row_offset[:, None] + (head * stride_cache_head + d)[None, :]

    token = (first_token + t).to(tl.int64)
    k = tl.load(
        k_ptr + token[:, None] * stride_k_token + (head * stride_k_head + d)[None, :], mask=mask
    )
    v = tl.load(
        v_ptr + token[:, None] * stride_v_token + (head * stride_v_head + d)[None, :], mask=mask
    )
    cache_dtype = kv_cache_ptr.dtype.element_ty
    tl.store(dst, k.to(cache_dtype), mask=mask)
    tl.store(dst + stride_cache_kv, v.to(cache_dtype), mask=mask)


kv_append_kernel = TritonKernel(_kv_append_kernel)
