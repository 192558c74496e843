"""The ``sdpa`` attention backend: the paged-KV contract on whole batches, for CPU (and any device).

Same semantics as the reference ``torch_cached_attention`` (see ``torch_cached_backend.py``), but
without a Python loop over sequences, so a decode step costs a few tensor ops whatever the batch:

1. every new token's k/v is written to its page in one indexed store;
2. the sequences of the batch are split into the prefill group and the decode group (prefills
   come first in the packed batch); for each group, the queries are padded to the group's longest
   query run and the keys/values gathered from the pages, padded to the group's longest context;
3. ``scaled_dot_product_attention`` runs once per group with a boolean mask (causal offset by
   ``input_pos``, sliding window); soft-capping and sinks, which SDPA cannot express, take the
   same padded tensors through an explicit float32 softmax.

Padded query rows repeat the last real row of their sequence (so no row is fully masked) and are
dropped when the result is scattered back to the packed token order.
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

    rows: Tensor  # [B, max_q]: packed token row of each padded query (pads repeat the last row)
    page_table: Tensor  # [B, max_pages]: the pages holding positions 0.. (pads repeat the last)
    num_keys: int  # key positions 0 .. num_keys-1 are attended to (the longest context)
    # [B, 1, max_q, num_keys]: causal (offset by input_pos) and window; None: every key visible
    visible: Tensor | None
    valid: Tensor  # [B, max_q]: real (not padded) query rows


@dataclass
class _StepPlan:
    """Everything about a step that every layer shares: computed once, by the first layer."""

    write_pages: Tensor  # [T]: page of each new token
    write_rows: Tensor  # [T]: row within that page
    groups: list[_GroupPlan]
    # True when the only group's queries are the packed tokens in order, one per sequence (a
    # decode-only batch): its output needs no scatter.
    in_order: bool = False


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
    device = cu_seqlen.device
    cu_seqlen, input_pos = cu_seqlen[: num_seqs + 1].long(), input_pos[:num_seqs].long()
    page0 = cu_num_pages[:num_seqs].long()
    seq_lens = cu_seqlen[1:] - cu_seqlen[:-1]
    num_tokens = int(cu_seqlen[-1])
    if num_prefill == 0 and num_tokens == num_seqs:
        return _decode_plan(input_pos, cache_loc, page0, page_size, sliding_window)

    # The page and row each new token's k/v is written to.
    seq_of_token = torch.repeat_interleave(
        torch.arange(num_seqs, device=device), seq_lens, output_size=num_tokens
    )
    position = input_pos[seq_of_token] + torch.arange(num_tokens, device=device)
    position -= cu_seqlen[seq_of_token]
    write_pages = cache_loc[page0[seq_of_token] + position // page_size].long()

    groups = []
    for seqs in (slice(0, num_prefill), slice(num_prefill, num_seqs)):
        if seqs.stop == seqs.start:
            continue
        q_lens, pos0 = seq_lens[seqs], input_pos[seqs]
        kv_lens = pos0 + q_lens
        num_pages = (kv_lens + page_size - 1) // page_size
        q_index = torch.arange(int(q_lens.max()), device=device)[None, :]
        page_index = torch.arange(int(num_pages.max()), device=device)[None, :]
        kv_index = torch.arange(int(kv_lens.max()), device=device)[None, None, :]
        i = torch.minimum(q_index, (q_lens - 1)[:, None])  # padded query rows repeat the last
        q_pos = (pos0[:, None] + i)[:, :, None]  # [B, max_q, 1]
        visible = kv_index <= q_pos  # [B, max_q, max_kv]: also hides unwritten rows
        if sliding_window is not None:
            visible &= kv_index > q_pos - sliding_window
        page_slot = page0[seqs][:, None] + torch.minimum(page_index, (num_pages - 1)[:, None])
        groups.append(
            _GroupPlan(
                rows=cu_seqlen[:-1][seqs][:, None] + i,
                page_table=cache_loc[page_slot].long(),
                num_keys=kv_index.shape[-1],
                visible=visible[:, None],
                valid=q_index < q_lens[:, None],
            )
        )
    in_order = num_prefill == 0 and num_tokens == num_seqs
    return _StepPlan(write_pages, position % page_size, groups, in_order)


def _decode_plan(
    position: Tensor,  # [B]: the one new token of each sequence
    cache_loc: Tensor,
    page0: Tensor,  # [B]: index of each sequence's first page in cache_loc
    page_size: int,
    sliding_window: int | None,
) -> _StepPlan:
    """``_make_plan`` for a decode-only batch (the common step), with fewer ops."""
    device = position.device
    page_of_token = position // page_size
    write_pages = cache_loc[page0 + page_of_token].long()
    page_index = torch.arange(int(page_of_token.max()) + 1, device=device)[None, :]
    page_table = cache_loc[page0[:, None] + torch.minimum(page_index, page_of_token[:, None])]
    num_keys = int(position.max()) + 1
    kv_index = torch.arange(num_keys, device=device)[None, :]
    visible: Tensor | None = kv_index <= position[:, None]  # [B, num_keys]
    if sliding_window is not None:
        visible &= kv_index > position[:, None] - sliding_window
    elif bool(visible.all()):  # equal contexts: no mask (SDPA's unmasked path is faster)
        visible = None
    rows = torch.arange(position.numel(), device=device)[:, None]
    group = _GroupPlan(
        rows=rows,
        page_table=page_table.long(),
        num_keys=num_keys,
        visible=None if visible is None else visible[:, None, None],
        valid=torch.ones_like(rows, dtype=torch.bool),
    )
    return _StepPlan(write_pages, position % page_size, [group], in_order=True)


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


def _gather_pages(kv_cache: Tensor, page_table: Tensor, num_keys: int) -> tuple[Tensor, Tensor]:
    """Whole pages of each sequence, copied page by page: keys and values as
    [B, n_kv, num_keys, d] (positions past a sequence's end are masked)."""
    batch, max_pages = page_table.shape
    _, _, num_kv_heads, page_size, head_dim = kv_cache.shape
    pages = kv_cache[page_table]  # [B, max_pages, 2, n_kv, page_size, d]
    kv = pages.permute(2, 0, 3, 1, 4, 5).reshape(2, batch, num_kv_heads, -1, head_dim)
    return kv[0, :, :, :num_keys], kv[1, :, :, :num_keys]


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
    """The op's body; arguments and shapes as ``torch_cached_attention`` (the convention)."""
    num_heads, head_dim = q.shape[2], q.shape[3]
    num_kv_heads, page_size = kv_cache.shape[2], kv_cache.shape[3]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    q_tokens = q.reshape(-1, num_heads, head_dim)
    k_pages = kv_cache[:, 0].transpose(1, 2)  # [num_pages, page_size, n_kv, d] (a view)
    v_pages = kv_cache[:, 1].transpose(1, 2)

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
    num_tokens = plan.write_pages.numel()
    k_pages[plan.write_pages, plan.write_rows] = k.reshape(-1, num_kv_heads, head_dim)[:num_tokens]
    v_pages[plan.write_pages, plan.write_rows] = v.reshape(-1, num_kv_heads, head_dim)[:num_tokens]

    if plan.in_order:  # decode-only: one query per sequence, already in packed order
        group = plan.groups[0]
        q_h = q_tokens[:num_tokens, :, None]  # [B, n, 1, d]
        k_h, v_h = _gather_pages(kv_cache, group.page_table, group.num_keys)
        result = _attend(q_h, k_h, v_h, group.visible, scale, logit_cap, sinks).to(q.dtype)
        if num_tokens == q_tokens.shape[0]:
            return result.view(q.shape)
        out = torch.zeros_like(q_tokens)  # CUDA-graph padding rows get zeros
        out[:num_tokens] = result.view(num_tokens, num_heads, head_dim)
        return out.view(q.shape)

    out = torch.zeros_like(q_tokens)
    for group in plan.groups:
        # [B, heads, tokens, d]: padded queries, keys/values gathered from the pages
        q_h = q_tokens[group.rows].transpose(1, 2)
        k_h, v_h = _gather_pages(kv_cache, group.page_table, group.num_keys)
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

    @classmethod
    def get_cached_op(cls):
        return torch.ops.auto_deploy.sdpa_cached_attention
