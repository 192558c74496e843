"""The ``torch`` attention backend: the reference cached attention over a paged KV cache.

``torch_cached_attention`` implements CACHED_ATTENTION_CONTRACT.md literally, one sequence at a
time, so it reads as the specification every faster backend is tested against:

    for each sequence i (its new tokens are q/k/v rows cu_seqlen[i] .. cu_seqlen[i+1]-1):
        positions p = input_pos[i] + 0 .. seq_len-1
        pages     = cache_loc[cu_num_pages[i] : cu_num_pages[i+1]]
        write k, v of each new token to page pages[p // page_size], row p % page_size
        gather the keys/values of positions 0 .. input_pos[i] + seq_len - 1 from the pages
        out = softmax(scale * q·k  [soft-capped]  masked to j <= p  [and j > p - window]
                      [+ one sink logit per head in the denominator]) · v

Scores, softmax and the weighted sum run in float32; the output has q's dtype. Tokens past the
last sequence (none today) get zeros.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..cached_op import register_convention_fake
from .descriptor import ATTENTION_CONVENTION, AttentionDescriptor, AttentionRegistry


@torch.library.custom_op("auto_deploy::torch_cached_attention", mutates_args=("kv_cache",))
def torch_cached_attention(
    q: Tensor,  # [b, s, num_heads, head_dim]; b * s = total tokens
    k: Tensor,  # [b, s, num_kv_heads, head_dim]
    v: Tensor,  # [b, s, num_kv_heads, head_dim]
    batch_info_host: Tensor,  # CPU [3]: num_prefill_seqs, num_prefill_tokens, num_decode_seqs
    cu_seqlen: Tensor,  # [B + 1]
    input_pos: Tensor,  # [B]
    cache_loc: Tensor,  # [total pages]
    cu_num_pages: Tensor,  # [B + 1]
    kv_cache: Tensor,  # [num_pages, 2, num_kv_heads, page_size, head_dim]
    scale: float | None = None,
    sliding_window: int | None = None,
    logit_cap: float | None = None,
    sinks: Tensor | None = None,  # [num_heads]
) -> Tensor:
    num_heads, head_dim = q.shape[2], q.shape[3]
    num_kv_heads, page_size = kv_cache.shape[2], kv_cache.shape[3]
    groups = num_heads // num_kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale

    q_tokens = q.reshape(-1, num_heads, head_dim)  # [T, n, d]
    k_tokens = k.reshape(-1, num_kv_heads, head_dim)  # [T, n_kv, d]
    v_tokens = v.reshape(-1, num_kv_heads, head_dim)
    # Token-major views of the cache halves: [num_pages, page_size, n_kv, d] (writes go through).
    k_pages = kv_cache[:, 0].transpose(1, 2)
    v_pages = kv_cache[:, 1].transpose(1, 2)

    num_prefill, _, num_decode = batch_info_host.tolist()
    num_seqs = num_prefill + num_decode
    starts = cu_seqlen[: num_seqs + 1].tolist()
    positions0 = input_pos[:num_seqs].tolist()
    page_starts = cu_num_pages[: num_seqs + 1].tolist()

    out = torch.zeros_like(q_tokens)
    for i in range(num_seqs):
        first, last = starts[i], starts[i + 1]  # this sequence's rows of q/k/v
        num_new, pos0 = last - first, positions0[i]
        pages = cache_loc[page_starts[i] : page_starts[i + 1]].long()

        # 1. write the new tokens' k/v into their pages
        new_pos = torch.arange(pos0, pos0 + num_new, device=q.device)
        k_pages[pages[new_pos // page_size], new_pos % page_size] = k_tokens[first:last]
        v_pages[pages[new_pos // page_size], new_pos % page_size] = v_tokens[first:last]

        # 2. gather all keys/values of the sequence so far: [kv_len, n_kv, d]
        kv_pos = torch.arange(pos0 + num_new, device=q.device)
        keys = k_pages[pages[kv_pos // page_size], kv_pos % page_size]
        values = v_pages[pages[kv_pos // page_size], kv_pos % page_size]
        keys = keys.repeat_interleave(groups, dim=1).float()  # GQA: [kv_len, n, d]
        values = values.repeat_interleave(groups, dim=1).float()

        # 3. attention of the new queries over them, in float32
        queries = q_tokens[first:last].float()  # [num_new, n, d]
        scores = torch.einsum("qhd,khd->hqk", queries, keys) * scale  # [n, num_new, kv_len]
        if logit_cap is not None:
            scores = logit_cap * torch.tanh(scores / logit_cap)
        visible = kv_pos[None, :] <= new_pos[:, None]  # causal, offset by input_pos
        if sliding_window is not None:
            visible &= kv_pos[None, :] > new_pos[:, None] - sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        if sinks is not None:  # an extra logit per head, dropped after the softmax
            sink = sinks.float().reshape(num_heads, 1, 1).expand(num_heads, num_new, 1)
            probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        else:
            probs = torch.softmax(scores, dim=-1)
        out[first:last] = torch.einsum("hqk,khd->qhd", probs, values).to(q.dtype)
    return out.view(q.shape)


register_convention_fake(torch_cached_attention, ATTENTION_CONVENTION)


@AttentionRegistry.register("torch")
class TorchCachedAttention(AttentionDescriptor):
    """Reference backend: every torch_attention feature (GQA, sliding window, logit cap, sinks),
    any mix of prefill and decode, any device; slow (a Python loop over sequences). ``auto``
    takes it where no faster backend supports the node."""

    auto_priority = {"*": 0}

    @classmethod
    def get_cached_op(cls):
        return torch.ops.auto_deploy.torch_cached_attention
