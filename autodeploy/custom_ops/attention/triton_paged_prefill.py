"""Triton kernel: causal attention of prefill tokens over a paged KV cache (flash attention).

Covers first chunks (input_pos == 0) and chunked-prefill continuations (input_pos > 0) alike:
the new keys are already in the cache (``triton_kv_append``), so a query at position p simply
attends to cache positions [0, p] (or (p - window, p] with a sliding window).

GQA packing: one program serves all GROUP query heads of one kv head, so each K/V tile is loaded
once per kv head. Its query tile has BLOCK_M = BLOCK_Q * GROUP_PAD rows; row r is new token
r // GROUP_PAD of the tile and query head kv_head * GROUP + r % GROUP_PAD (rows whose head index
reaches GROUP are padding when GROUP is not a power of two).
"""

from __future__ import annotations

import triton.language as tl

from .._triton_kernel import MAX_COMBINE, SUM_COMBINE, TritonKernel
from .triton_common import LOG2E, NEG_LARGE


def _paged_prefill_kernel(
    q_ptr,
    kv_cache_ptr,
    out_ptr,
    sinks_ptr,
    cu_seqlen_ptr,
    input_pos_ptr,
    cache_loc_ptr,
    cu_num_pages_ptr,
    stride_q_token,
    stride_q_head,
    stride_o_token,
    stride_o_head,
    stride_cache_page,
    stride_cache_kv,
    stride_cache_head,
    stride_cache_row,
    scale,
    logit_cap,
    sliding_window,
    num_seqs,
    num_tiles,
    search_steps,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_CAP: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """out[t, h] = sum_j softmax_j(s_tj) v_j for BLOCK_Q new tokens of one sequence, one kv head.

    Grid: (num_tiles, num_kv_heads) with num_tiles = num_prefill_tokens // BLOCK_Q + num_seqs.
    Sequence i owns the query tiles [start(i), start(i + 1)), start(i) = cu_seqlen[i] // BLOCK_Q
    + i: at least cdiv(seq_len[i], BLOCK_Q) tiles (the spare one, if any, is empty), so the grid
    follows the packed token count instead of num_seqs x the longest sequence. A program finds
    its sequence by binary search over start() (``search_steps`` = ceil(log2(num_seqs))) and
    takes tiles in reverse order, so the long causal tiles start first. Tile b of sequence i
    covers new tokens [b * BLOCK_Q, (b + 1) * BLOCK_Q), for the query heads of kv head g.
    With p_t = input_pos[i] + t and keys j in [0, p_t] (and j > p_t - window):

        s_tj = scale * q_t . k_j           (then cap * tanh(s_tj / cap) with a logit cap)
        out_t = sum_j exp(s_tj - m_t) v_j / (exp(sink - m_t) + sum_j exp(s_tj - m_t))

    computed online over key tiles of BLOCK_N positions (running max m, running sum l, fp32
    accumulator). The sink term is present only with sinks (one logit per query head); it is
    the initial state m = sink, l = 1. Shapes: q, out [total_tokens, num_heads, HEAD_DIM]
    (last dim contiguous); sinks [num_heads].
    """
    tile = num_tiles - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)
    lo = 0  # binary search: the last sequence with start(seq) <= tile
    hi = num_seqs
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        go_right = tl.load(cu_seqlen_ptr + mid) // BLOCK_Q + mid <= tile
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid)
    seq = lo
    q_block = tile - (tl.load(cu_seqlen_ptr + seq) // BLOCK_Q + seq)
    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD

    first_token = tl.load(cu_seqlen_ptr + seq)
    seq_len = tl.load(cu_seqlen_ptr + seq + 1) - first_token
    input_pos = tl.load(input_pos_ptr + seq)
    page_base = tl.load(cu_num_pages_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    t = q_block * BLOCK_Q + rows // GROUP_PAD  # [M] new-token index within the sequence
    group_idx = rows % GROUP_PAD
    head = kv_head * GROUP + group_idx  # [M] query head
    row_mask = (t < seq_len) & (group_idx < GROUP)
    q_pos = input_pos + t  # [M] query positions
    d = tl.arange(0, BLOCK_D)
    d_mask = d[None, :] < HEAD_DIM

    token = (first_token + t).to(tl.int64)
    q_ptrs = q_ptr + token[:, None] * stride_q_token + head[:, None] * stride_q_head + d[None, :]
    q = tl.load(q_ptrs, mask=row_mask[:, None] & d_mask, other=0.0)
    q = q.to(kv_cache_ptr.dtype.element_ty)  # [M, D]

    if HAS_SINKS:
        sink = tl.load(sinks_ptr + head, mask=row_mask, other=0.0).to(tl.float32)
        m_i = sink * LOG2E
        l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    else:
        m_i = tl.full([BLOCK_M], NEG_LARGE, dtype=tl.float32)
        l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)

    # Keys this tile can see: from (first query - window) or 0 up to its last query, inclusive.
    # (Tiles past the end of a shorter sequence get an empty range.)
    kv_end = input_pos + tl.minimum((q_block + 1) * BLOCK_Q, seq_len)
    kv_start = 0
    if HAS_WINDOW:
        kv_start = tl.maximum(input_pos + q_block * BLOCK_Q - sliding_window + 1, 0)
        kv_start = (kv_start // BLOCK_N) * BLOCK_N
    kv_end = tl.where(q_block * BLOCK_Q < seq_len, kv_end, kv_start)
    # Phase 0: key tiles wholly at or before the tile's first query position, which every row
    # sees (no mask; none with a window). Phase 1: the rest (causal diagonal, window), masked.
    unmasked_end = kv_start
    if not HAS_WINDOW:
        first_q_pos = input_pos + q_block * BLOCK_Q
        unmasked_end = tl.minimum((first_q_pos + 1) // BLOCK_N * BLOCK_N, kv_end)
    kv_head_ptr = kv_cache_ptr + kv_head * stride_cache_head
    for phase in tl.static_range(2):  # unrolled at compile time: two loops
        phase_start = kv_start if phase == 0 else unmasked_end
        phase_end = unmasked_end if phase == 0 else kv_end
        for start in range(phase_start, phase_end, BLOCK_N):
            k_pos = start + tl.arange(0, BLOCK_N)  # [N] key positions
            k_mask = k_pos < phase_end
            page = tl.load(cache_loc_ptr + page_base + k_pos // PAGE_SIZE, mask=k_mask, other=0)
            row = (k_pos % PAGE_SIZE).to(tl.int64) * stride_cache_row
            kv_ptrs = (
                kv_head_ptr
                + page.to(tl.int64)[:, None] * stride_cache_page
                + row[:, None]
                + d[None, :]
            )  # [N, D] K of this kv head
            k = tl.load(kv_ptrs, mask=k_mask[:, None] & d_mask, other=0.0)

            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale  # [M, N]
            if HAS_CAP:  # cap * tanh(s / cap)
                s = logit_cap - 2.0 * logit_cap / (tl.exp(2.0 * s / logit_cap) + 1.0)
            s = s * LOG2E
            if phase == 1:
                visible = k_mask[None, :] & (k_pos[None, :] <= q_pos[:, None])
                if HAS_WINDOW:
                    visible = visible & (k_pos[None, :] > q_pos[:, None] - sliding_window)
                s = tl.where(visible, s, float("-inf"))

            m_new = tl.maximum(m_i, tl.reduce(s, 1, MAX_COMBINE))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.reduce(p, 1, SUM_COMBINE)
            v = tl.load(kv_ptrs + stride_cache_kv, mask=k_mask[:, None] & d_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # l_i == 0 only in padding rows
    o_ptrs = out_ptr + token[:, None] * stride_o_token + head[:, None] * stride_o_head + d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & d_mask)


paged_prefill_kernel = TritonKernel(_paged_prefill_kernel)
