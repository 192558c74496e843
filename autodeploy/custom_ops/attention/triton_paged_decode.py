"""Triton kernels: split-K flash decoding over a paged KV cache (one new token per sequence).

Stage 1 (``paged_decode_partial_kernel``) splits each sequence's visible key range into
num_splits chunks of whole BLOCK_N tiles; a program handles one (sequence, kv head, chunk) and
all GROUP query heads of that kv head (GQA packing: K/V loaded once per kv head; the query tile
is padded to GROUP_PAD >= 16 rows so ``tl.dot`` can use tensor cores). It writes the chunk's
partial softmax state: running max m (base 2), sum l and unnormalised accumulator acc.
Stage 2 (``paged_decode_reduce_kernel``) merges the chunks of one (sequence, query head):

    M = max(max_c m_c, sink)     w_c = 2^(m_c - M)
    out = sum_c w_c acc_c / (sum_c w_c l_c + 2^(sink - M))      (sink term only with sinks)

With num_splits == 1, stage 1 normalises and writes the output itself (``SINGLE_SPLIT``) and
stage 2 is not launched.
"""

from __future__ import annotations

import triton.language as tl

from .._triton_kernel import MAX_COMBINE, SUM_COMBINE, TritonKernel
from .triton_common import LOG2E, NEG_LARGE


def _paged_decode_partial_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    kv_cache_ptr,
    out_ptr,
    sinks_ptr,
    part_m_ptr,
    part_l_ptr,
    part_acc_ptr,
    input_pos_ptr,
    cache_loc_ptr,
    cu_num_pages_ptr,
    first_seq,
    first_token,
    stride_q_token,
    stride_q_head,
    stride_k_token,
    stride_k_head,
    stride_v_token,
    stride_v_head,
    stride_o_token,
    stride_o_head,
    stride_cache_page,
    stride_cache_kv,
    stride_cache_head,
    stride_cache_row,
    scale,
    logit_cap,
    sliding_window,
    num_heads,
    num_splits,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_CAP: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Partial attention of decode sequence ``first_seq + pid0`` over one chunk of its keys.

    Grid: (num_decode_seqs, num_kv_heads, num_splits). The query (token ``first_token + pid0``)
    sits at p = input_pos[seq]; visible keys are [lo, p] with lo = 0 (or p - window + 1).
    Chunk c covers [lo + c * C, lo + (c + 1) * C) with C = cdiv(cdiv(p + 1 - lo, num_splits),
    BLOCK_N) * BLOCK_N, so a long sequence is shared evenly and a short one leaves the last
    chunks empty (they write m = NEG_LARGE, l = 0, acc = 0). For each query head h of the group:

        s_j = scale * q_h . k_j  (soft-capped),  m = max_j s_j,  l = sum_j 2^(s_j - m),
        acc = sum_j 2^(s_j - m) v_j                              (s_j in base 2)

    The new token's k/v (position p) are also written to the cache here, by the program whose
    chunk holds p; that program takes key p straight from k/v (an extra online-softmax step)
    and reads only keys < p from the cache, so nothing in this launch reads what it writes.

    Partials: part_m/part_l [num_decode, num_heads, num_splits], part_acc [..., HEAD_DIM] fp32.
    Shapes: q [tokens, num_heads, HEAD_DIM], k/v [tokens, num_kv_heads, HEAD_DIM].
    """
    dseq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = first_seq + dseq
    token = (first_token + dseq).to(tl.int64)

    q_pos = tl.load(input_pos_ptr + seq)
    page_base = tl.load(cu_num_pages_ptr + seq)
    kv_end = q_pos + 1
    kv_start = 0
    if HAS_WINDOW:
        kv_start = tl.maximum(q_pos - sliding_window + 1, 0)
    per_split = (kv_end - kv_start + num_splits - 1) // num_splits  # cdiv, inline: cheaper
    chunk = (per_split + BLOCK_N - 1) // BLOCK_N * BLOCK_N  # in the interpreter than tl.cdiv
    lo = kv_start + split * chunk
    hi = tl.minimum(lo + chunk, kv_end)

    group_idx = tl.arange(0, GROUP_PAD)
    head = kv_head * GROUP + group_idx  # [G] query heads of this kv head
    row_mask = group_idx < GROUP
    d = tl.arange(0, BLOCK_D)
    d_mask = d[None, :] < HEAD_DIM
    q_ptrs = q_ptr + token * stride_q_token + head[:, None] * stride_q_head + d[None, :]
    q = tl.load(q_ptrs, mask=row_mask[:, None] & d_mask, other=0.0)
    q = q.to(kv_cache_ptr.dtype.element_ty)  # [G, D]

    if HAS_SINKS and SINGLE_SPLIT:  # with several splits, stage 2 adds the sink
        sink = tl.load(sinks_ptr + head, mask=row_mask, other=0.0).to(tl.float32)
        m_i = sink * LOG2E
        l_i = tl.full([GROUP_PAD], 1.0, dtype=tl.float32)
    else:
        m_i = tl.full([GROUP_PAD], NEG_LARGE, dtype=tl.float32)
        l_i = tl.full([GROUP_PAD], 0.0, tl.float32)
    acc = tl.full([GROUP_PAD, BLOCK_D], 0.0, tl.float32)

    # The new token: write it to its cache row; the owner of its chunk uses it after the loop.
    kv_head_ptr = kv_cache_ptr + kv_head * stride_cache_head
    cache_dtype = kv_cache_ptr.dtype.element_ty
    is_owner = (q_pos >= lo) & (q_pos < hi)
    d_valid = d < HEAD_DIM
    k_new = tl.load(
        k_ptr + token * stride_k_token + kv_head * stride_k_head + d, mask=d_valid, other=0.0
    ).to(cache_dtype)  # [D]
    v_new = tl.load(
        v_ptr + token * stride_v_token + kv_head * stride_v_head + d, mask=d_valid, other=0.0
    ).to(cache_dtype)
    new_page = tl.load(cache_loc_ptr + page_base + q_pos // PAGE_SIZE).to(tl.int64)
    new_ptrs = (
        kv_head_ptr
        + new_page * stride_cache_page
        + (q_pos % PAGE_SIZE).to(tl.int64) * stride_cache_row
        + d
    )
    tl.store(new_ptrs, k_new, mask=d_valid & is_owner)
    tl.store(new_ptrs + stride_cache_kv, v_new, mask=d_valid & is_owner)

    cached_end = tl.minimum(hi, q_pos)  # keys < p come from the cache
    for start in range(lo, cached_end, BLOCK_N):
        k_pos = start + tl.arange(0, BLOCK_N)  # [N]
        k_mask = k_pos < cached_end
        page = tl.load(cache_loc_ptr + page_base + k_pos // PAGE_SIZE, mask=k_mask, other=0)
        row = (k_pos % PAGE_SIZE).to(tl.int64) * stride_cache_row
        kv_ptrs = (
            kv_head_ptr + page.to(tl.int64)[:, None] * stride_cache_page + row[:, None] + d[None, :]
        )  # [N, D] K of this kv head
        k = tl.load(kv_ptrs, mask=k_mask[:, None] & d_mask, other=0.0)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale  # [G, N]
        if HAS_CAP:
            s = logit_cap - 2.0 * logit_cap / (tl.exp(2.0 * s / logit_cap) + 1.0)  # cap*tanh(s/cap)
        s = tl.where(k_mask[None, :], s * LOG2E, float("-inf"))

        m_new = tl.maximum(m_i, tl.reduce(s, 1, MAX_COMBINE))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, SUM_COMBINE)
        v = tl.load(kv_ptrs + stride_cache_kv, mask=k_mask[:, None] & d_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    # key p (the new token), for the owner only: s = scale * q . k_new, same update as above
    s = tl.reduce(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1, SUM_COMBINE) * scale  # [G]
    if HAS_CAP:
        s = logit_cap - 2.0 * logit_cap / (tl.exp(2.0 * s / logit_cap) + 1.0)
    s = tl.where(is_owner, s * LOG2E, float("-inf"))
    m_new = tl.maximum(m_i, s)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new)
    l_i = l_i * alpha + p
    acc = acc * alpha[:, None] + p[:, None] * v_new.to(tl.float32)[None, :]
    m_i = m_new

    store_mask = row_mask[:, None] & d_mask
    if SINGLE_SPLIT:
        out = acc / l_i[:, None]
        o_ptrs = out_ptr + token * stride_o_token + head[:, None] * stride_o_head + d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        part = (dseq * num_heads + head) * num_splits + split  # [G] index into part_m / part_l
        tl.store(part_m_ptr + part, m_i, mask=row_mask)
        tl.store(part_l_ptr + part, l_i, mask=row_mask)
        acc_ptrs = part_acc_ptr + part[:, None].to(tl.int64) * HEAD_DIM + d[None, :]
        tl.store(acc_ptrs, acc, mask=store_mask)


def _paged_decode_reduce_kernel(
    out_ptr,
    sinks_ptr,
    part_m_ptr,
    part_l_ptr,
    part_acc_ptr,
    first_token,
    stride_o_token,
    stride_o_head,
    num_heads,
    num_splits,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_SINKS: tl.constexpr,
):
    """Merge the num_splits partial states of one (decode sequence, query head) into ``out``.

    Grid: (num_decode_seqs, num_heads). See the module docstring for the formula.
    """
    dseq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    split_mask = splits < num_splits
    part = (dseq * num_heads + head) * num_splits + splits  # [S]
    m = tl.load(part_m_ptr + part, mask=split_mask, other=float("-inf"))
    l = tl.load(part_l_ptr + part, mask=split_mask, other=0.0)  # noqa: E741
    d = tl.arange(0, BLOCK_D)
    acc_mask = split_mask[:, None] & (d[None, :] < HEAD_DIM)
    acc = tl.load(
        part_acc_ptr + part[:, None].to(tl.int64) * HEAD_DIM + d[None, :], mask=acc_mask, other=0.0
    )  # [S, D]

    m_max = tl.reduce(m, 0, MAX_COMBINE)
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + head).to(tl.float32) * LOG2E
        m_max = tl.maximum(m_max, sink)
    weight = tl.exp2(m - m_max)  # [S]; empty or padded chunks weigh 0
    denominator = tl.reduce(l * weight, 0, SUM_COMBINE)
    if HAS_SINKS:
        denominator += tl.exp2(sink - m_max)
    out = tl.reduce(acc * weight[:, None], 0, SUM_COMBINE) / denominator  # [D]

    token = (first_token + dseq).to(tl.int64)
    tl.store(
        out_ptr + token * stride_o_token + head * stride_o_head + d,
        out.to(out_ptr.dtype.element_ty),
        mask=d < HEAD_DIM,
    )


paged_decode_partial_kernel = TritonKernel(_paged_decode_partial_kernel)
paged_decode_reduce_kernel = TritonKernel(_paged_decode_reduce_kernel)
