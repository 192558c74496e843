"""Reference attention ops. The code below *is* the specification of their semantics.

``torch_attention`` is the one canonical attention op every matcher emits and every cached
attention backend replaces:

- layouts: ``"bsnd"`` = [batch, seq, heads, head_dim], ``"bnsd"`` = [batch, heads, seq, head_dim];
  the output has the query's layout (and the value's head_dim).
- grouped-query attention: ``key``/``value`` may have fewer heads than ``query`` (a divisor);
  query head ``h`` reads kv head ``h // (num_heads // num_kv_heads)``.
- causal masking is aligned bottom-right: with ``s_q`` queries and ``s_k`` keys, query ``i`` sits
  at position ``s_k - s_q + i`` (the usual convention when the queries are the newest tokens).
  For ``s_q == s_k`` this is the same as ``F.scaled_dot_product_attention(is_causal=True)``.
- ``sliding_window=w``: a query at position ``i`` sees the keys ``j`` with ``i - w < j <= i``.
- ``logit_cap=c``: scores are soft-capped to ``c * tanh(score / c)`` (after scaling, before mask).
- ``sinks``: one extra logit per head that joins the softmax denominator and is then dropped
  (GPT-OSS "attention sinks").
- ``attn_mask``: optional boolean (True = keep) or additive float mask broadcastable to
  [batch, heads, s_q, s_k].
- scores, softmax and the weighted sum run in float32; the output has the query's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.library.custom_op("auto_deploy::torch_attention", mutates_args=())
def torch_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = True,
    scale: float | None = None,
    sinks: Tensor | None = None,
    sliding_window: int | None = None,
    logit_cap: float | None = None,
    layout: str = "bsnd",
) -> Tensor:
    _check_layout(layout)
    if layout == "bsnd":  # work in [batch, heads, seq, head_dim]
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    num_heads, s_q, head_dim = query.shape[1], query.shape[2], query.shape[3]
    num_kv_heads, s_k = key.shape[1], key.shape[2]
    groups = num_heads // num_kv_heads
    key = key.repeat_interleave(groups, dim=1)  # [b, n, s_k, d]
    value = value.repeat_interleave(groups, dim=1)  # [b, n, s_k, d_v]

    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    scores = (query.float() @ key.float().transpose(-2, -1)) * scale  # [b, n, s_q, s_k]
    if logit_cap is not None:
        scores = logit_cap * torch.tanh(scores / logit_cap)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    if is_causal or sliding_window is not None:
        q_pos = torch.arange(s_k - s_q, s_k, device=query.device)[:, None]  # [s_q, 1]
        k_pos = torch.arange(s_k, device=query.device)[None, :]  # [1, s_k]
        visible = torch.ones(s_q, s_k, dtype=torch.bool, device=query.device)
        if is_causal:
            visible &= k_pos <= q_pos
        if sliding_window is not None:
            visible &= k_pos > q_pos - sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))

    if sinks is not None:  # one extra logit per head in the denominator
        sink = sinks.float().reshape(1, num_heads, 1, 1).expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    out = (probs @ value.float()).to(query.dtype)  # [b, n, s_q, d_v]
    if layout == "bsnd":
        out = out.transpose(1, 2)
    return out.contiguous()


@torch_attention.register_fake
def _torch_attention_fake(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=True,
    scale=None,
    sinks=None,
    sliding_window=None,
    logit_cap=None,
    layout="bsnd",
):
    return query.new_empty(*query.shape[:-1], value.shape[-1])


@torch.library.custom_op("auto_deploy::torch_attention_repeat_kv", mutates_args=())
def torch_attention_repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Repeat each kv head ``n_rep`` times: [b, n_kv, s, d] -> [b, n_kv * n_rep, s, d]."""
    return x.repeat_interleave(n_rep, dim=1)


@torch_attention_repeat_kv.register_fake
def _torch_attention_repeat_kv_fake(x, n_rep):
    b, n_kv, s, d = x.shape
    return x.new_empty(b, n_kv * n_rep, s, d)


def _check_layout(layout: str) -> None:
    if layout not in ("bsnd", "bnsd"):
        raise ValueError(f"torch_attention: layout must be 'bsnd' or 'bnsd', got {layout!r}.")
