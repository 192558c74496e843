"""The ``sdpa`` attention backend: the paged-KV contract on whole batches, for CPU (and any device).

Same semantics as the reference ``torch_cached_attention`` (see ``torch_cached_backend.py``), but
without a Python loop over sequences, so a decode step costs a few tensor ops whatever the batch.
The cache is in the "NHD" layout, ``[num_pages, page_size, 2, num_kv_heads, head_dim]``: viewed
as one row per cached token (``[num_pages * page_size, 2, n_kv, d]``), a token's k and v are one
row, so

1. every new token's k/v is written to its row in one indexed store;
2. the sequences of the batch are split into the prefill group and the decode group (prefills
   come first in the packed batch); for each group, the queries are padded to the group's longest
   query run, and the rows of positions 0 .. longest context - 1 of every sequence are gathered
   in one ``index_select`` (exactly the rows needed; k and v then are strided views of it, which
   SDPA reads as they are: no second copy);
3. ``scaled_dot_product_attention`` runs once per group with a boolean mask (causal offset by
   ``input_pos``, sliding window); soft-capping and sinks, which SDPA cannot express, take the
   same padded tensors through an explicit float32 softmax.

Padded query rows repeat the last real row of their sequence (so no row is fully masked) and are
dropped when the result is scattered back to the packed token order; padded key positions repeat
a sequence's last row and are masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cached_op import define_cached_op
from .descriptor import ATTENTION_CONVENTION, AttentionDescriptor, AttentionRegistry


@dataclass
class _GroupPlan:
    """Index tensors of one group (the prefills or the decodes) of a step."""

    # [B, max_q]: packed token row of each padded query (pads repeat the last row); None when the
    # queries are the packed tokens in order (``_StepPlan.in_order``)
    rows: Tensor | None
    kv_rows: Tensor  # [B * num_keys]: cache row of key positions 0..num_keys-1 of each sequence
    num_keys: int  # the longest context of the group
    # [B, 1, max_q, num_keys]: causal (offset by input_pos) and window; None: every key visible
    visible: Tensor | None
    valid: Tensor | None  # [B, max_q]: real (not padded) query rows (None as ``rows``)


@dataclass
class _StepPlan:
    """Everything about a step that every layer shares: computed once, by the first layer."""

    write_rows: Tensor  # [T]: cache row of each new token
    groups: list[_GroupPlan]
    # True when the only group's queries are the packed tokens in order, one per sequence (a
    # decode-only batch): its output needs no scatter.
    in_order: bool = False


def _cache_rows(cache_loc: Tensor, first_page: Tensor, position: Tensor, page_size: int) -> Tensor:
    """Cache row (page * page_size + offset) of token ``position`` of the sequences whose page
    lists start at ``cache_loc[first_page]`` (broadcasting)."""
    page = cache_loc[first_page + torch.div(position, page_size, rounding_mode="floor")]
    return page * page_size + position % page_size


def _key_rows(
    cache_loc: Tensor, page0: Tensor, kv_lens: Tensor, num_keys: int, page_size: int
) -> Tensor:
    """[B * num_keys]: rows of positions 0..num_keys-1 of each sequence; positions at or past a
    sequence's length repeat its last row (they are masked)."""
    position = torch.arange(num_keys, device=kv_lens.device, dtype=kv_lens.dtype)[None, :]
    position = torch.minimum(position, (kv_lens - 1)[:, None])
    return _cache_rows(cache_loc, page0[:, None], position, page_size).reshape(-1)


def _make_plan(
    num_prefill: int,
    num_seqs: int,
    cu_seqlen: Tensor,  # [B + 1]
    input_pos: Tensor,  # [B]
    cache_loc: Tensor,
    cu_num_pages: Tensor,  # [B + 1]
    page_size: int,
    sliding_window: int | None,
) -> _StepPlan:
    # Index arithmetic stays in the metadata's int32: indexing accepts it, and converting
    # every tensor to int64 cost more than the rest of a decode plan.
    input_pos, page0 = input_pos[:num_seqs], cu_num_pages[:num_seqs]
    if num_prefill == 0:  # decode only: one new token per sequence (the batch contract)
        return _decode_plan(input_pos, cache_loc, page0, page_size, sliding_window)
    device = cu_seqlen.device
    cu_seqlen = cu_seqlen[: num_seqs + 1]
    seq_lens = cu_seqlen[1:] - cu_seqlen[:-1]
    num_tokens = int(cu_seqlen[-1])

    # The row each new token's k/v is written to.
    seq_of_token = torch.repeat_interleave(
        torch.arange(num_seqs, device=device, dtype=torch.int32), seq_lens, output_size=num_tokens
    )
    position = input_pos[seq_of_token] + torch.arange(num_tokens, device=device, dtype=torch.int32)
    position -= cu_seqlen[seq_of_token]
    write_rows = _cache_rows(cache_loc, page0[seq_of_token], position, page_size)

    groups = []
    for seqs in (slice(0, num_prefill), slice(num_prefill, num_seqs)):
        if seqs.stop == seqs.start:
            continue
        q_lens, pos0 = seq_lens[seqs], input_pos[seqs]
        kv_lens = pos0 + q_lens
        num_keys = int(kv_lens.max())
        q_index = torch.arange(int(q_lens.max()), device=device)[None, :]
        kv_index = torch.arange(num_keys, device=device)[None, None, :]
        i = torch.minimum(q_index, (q_lens - 1)[:, None])  # padded query rows repeat the last
        q_pos = (pos0[:, None] + i)[:, :, None]  # [B, max_q, 1]
        visible = kv_index <= q_pos  # [B, max_q, max_kv]: also hides unwritten rows
        if sliding_window is not None:
            visible &= kv_index > q_pos - sliding_window
        groups.append(
            _GroupPlan(
                rows=cu_seqlen[:-1][seqs][:, None] + i,
                kv_rows=_key_rows(cache_loc, page0[seqs], kv_lens, num_keys, page_size),
                num_keys=num_keys,
                visible=visible[:, None],
                valid=q_index < q_lens[:, None],
            )
        )
    return _StepPlan(write_rows, groups)  # a prefill comes first: queries need the scatter


def _decode_plan(
    position: Tensor,  # [B]: the one new token of each sequence
    cache_loc: Tensor,
    page0: Tensor,  # [B]: index of each sequence's first page in cache_loc
    page_size: int,
    sliding_window: int | None,
) -> _StepPlan:
    """``_make_plan`` for a decode-only batch (the common step), with as few ops as possible:
    each sequence's new token is its last key, so its write row is in the key rows."""
    low, high = (int(x) for x in torch.aminmax(position))
    num_keys = high + 1
    kv_index = torch.arange(num_keys, device=position.device, dtype=position.dtype)[None, :]
    last = position[:, None]
    # [B, num_keys]; positions past a sequence's end repeat its last row (they are masked)
    key_rows = _cache_rows(cache_loc, page0[:, None], torch.minimum(kv_index, last), page_size)
    visible: Tensor | None = None  # equal contexts, no window: no mask (SDPA is faster)
    if low != high or sliding_window is not None:
        visible = kv_index <= last
        if sliding_window is not None:
            visible &= kv_index > last - sliding_window
        visible = visible[:, None, None]  # [B, 1, 1, num_keys]
    group = _GroupPlan(None, key_rows.reshape(-1), num_keys, visible, None)
    # The last column is min(num_keys - 1, position) = position: the new token's row.
    return _StepPlan(key_rows[:, -1], [group], in_order=True)


class _PlanCache:
    """The plans of the current step, reused while the batch metadata is unchanged: every layer
    of a step sees the same metadata, and comparing a few small tensors is far cheaper than
    planning again. Keyed by what differs between layers of one model (e.g. Gemma-2 alternates
    sliding and global layers)."""

    def __init__(self) -> None:
        self.inputs: tuple[Tensor, ...] = ()
        self.plans: dict[tuple, _StepPlan] = {}

    def get(self, key: tuple, inputs: tuple[Tensor, ...], make) -> _StepPlan:
        same_step = len(inputs) == len(self.inputs) and all(
            a.shape == b.shape and a.device == b.device and torch.equal(a, b)
            for a, b in zip(inputs, self.inputs)
        )
        if not same_step:
            self.inputs, self.plans = tuple(t.clone() for t in inputs), {}
        if key not in self.plans:
            self.plans[key] = make()
        return self.plans[key]


_plan_cache = _PlanCache()


def _gather_keys(token_rows: Tensor, group: _GroupPlan) -> tuple[Tensor, Tensor]:
    """Keys and values of positions 0..num_keys-1 of each sequence, [B, n_kv, num_keys, d]
    (strided views of one gathered copy)."""
    gathered = token_rows.index_select(0, group.kv_rows)  # [B * num_keys, 2, n_kv, d]
    gathered = gathered.view(-1, group.num_keys, *token_rows.shape[1:])
    return gathered[:, :, 0].transpose(1, 2), gathered[:, :, 1].transpose(1, 2)


def _attend(
    q_h: Tensor,  # [B, n, max_q, d]
    k_h: Tensor,  # [B, n_kv, max_kv, d]
    v_h: Tensor,
    visible: Tensor | None,  # [B, 1, max_q, max_kv]; None: no mask
    scale: float,
    logit_cap: float | None,
    sinks: Tensor | None,  # [n]
) -> Tensor:
    """SDPA when it can express the call; soft-capping and sink logits go through an explicit
    float32 softmax (as the reference)."""
    if logit_cap is None and sinks is None:
        return F.scaled_dot_product_attention(
            q_h, k_h, v_h, attn_mask=visible, scale=scale, enable_gqa=q_h.shape[1] != k_h.shape[1]
        )
    groups = q_h.shape[1] // k_h.shape[1]
    keys = k_h.repeat_interleave(groups, dim=1).float()
    values = v_h.repeat_interleave(groups, dim=1).float()
    scores = torch.matmul(q_h.float(), keys.transpose(-1, -2)) * scale  # [B, n, max_q, max_kv]
    if logit_cap is not None:
        scores = logit_cap * torch.tanh(scores / logit_cap)
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    if sinks is not None:  # one extra logit per head, dropped after the softmax
        sink = sinks.float().reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, values)


def _sdpa_paged_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    batch_info_host: Tensor,
    cu_seqlen: Tensor,
    input_pos: Tensor,
    cache_loc: Tensor,
    cu_num_pages: Tensor,
    kv_cache: Tensor,
    scale: float | None = None,
    sliding_window: int | None = None,
    logit_cap: float | None = None,
    sinks: Tensor | None = None,
) -> Tensor:
    """The op's body; arguments and shapes as ``torch_cached_attention`` (the convention), but
    ``kv_cache`` in the NHD layout ``[num_pages, page_size, 2, num_kv_heads, head_dim]``."""
    num_heads, head_dim = q.shape[2], q.shape[3]
    page_size, num_kv_heads = kv_cache.shape[1], kv_cache.shape[3]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    q_tokens = q.reshape(-1, num_heads, head_dim)
    token_rows = kv_cache.view(-1, 2, num_kv_heads, head_dim)  # one row per cached token

    num_prefill, _, num_decode = batch_info_host.tolist()
    num_seqs = num_prefill + num_decode
    if num_seqs == 0:
        return torch.zeros_like(q)
    metadata = (cu_seqlen, input_pos, cache_loc, cu_num_pages)
    plan = _plan_cache.get(
        (num_prefill, num_seqs, page_size, sliding_window, q.device),
        metadata,
        lambda: _make_plan(num_prefill, num_seqs, *metadata, page_size, sliding_window),
    )
    num_tokens = plan.write_rows.numel()
    new_kv = torch.stack(
        (
            k.reshape(-1, num_kv_heads, head_dim)[:num_tokens],
            v.reshape(-1, num_kv_heads, head_dim)[:num_tokens],
        ),
        dim=1,
    )
    token_rows[plan.write_rows] = new_kv.to(token_rows.dtype)

    if plan.in_order:  # decode-only: one query per sequence, already in packed order
        group = plan.groups[0]
        q_h = q_tokens[:num_tokens, :, None]  # [B, n, 1, d]
        k_h, v_h = _gather_keys(token_rows, group)
        result = _attend(q_h, k_h, v_h, group.visible, scale, logit_cap, sinks).to(q.dtype)
        if num_tokens == q_tokens.shape[0]:
            return result.view(q.shape)
        out = torch.zeros_like(q_tokens)  # CUDA-graph padding rows get zeros
        out[:num_tokens] = result.view(num_tokens, num_heads, head_dim)
        return out.view(q.shape)

    out = torch.zeros_like(q_tokens)
    for group in plan.groups:
        # [B, heads, tokens, d]: padded queries, keys/values gathered from the cache rows
        q_h = q_tokens[group.rows].transpose(1, 2)
        k_h, v_h = _gather_keys(token_rows, group)
        result = _attend(q_h, k_h, v_h, group.visible, scale, logit_cap, sinks)
        out[group.rows[group.valid]] = result.transpose(1, 2)[group.valid].to(out.dtype)
    return out.view(q.shape)


# The schema and fake come from the attention calling convention.
sdpa_cached_attention = define_cached_op(
    "auto_deploy::sdpa_cached_attention", _sdpa_paged_attention, ATTENTION_CONVENTION
)


@AttentionRegistry.register("sdpa")
class SdpaCachedAttention(AttentionDescriptor):
    """Batched backend: every torch_attention feature (GQA, sliding window, logit cap, sinks),
    any mix of prefill and decode, any device; no per-sequence loop. ``auto``'s choice on CPU
    (on CUDA, Triton and FlashInfer are faster)."""

    auto_priority = {"cpu": 5}
    kv_layout = "NHD"  # a token's k and v are one cache row (see the module docstring)

    @classmethod
    def get_cached_op(cls):
        return torch.ops.auto_deploy.sdpa_cached_attention
