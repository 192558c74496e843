"""Reference RoPE with a precomputed cos/sin table indexed by position. This code *is* the spec.

``optimize_rope`` evaluates a model's cos/sin computation once for every position up to
``max_seq_len`` and stores the result; each step then only looks rows up by ``position_ids``
instead of recomputing frequencies, cos and sin per forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .torch_backend import torch_rope_with_explicit_cos_sin


@torch.library.custom_op("auto_deploy::torch_rope_with_cos_sin_cache", mutates_args=())
def torch_rope_with_cos_sin_cache(
    q: Tensor,
    k: Tensor,
    position_ids: Tensor,
    cos_cache: Tensor,
    sin_cache: Tensor,
    unsqueeze_dim: int = 2,
) -> tuple[Tensor, Tensor]:
    """Rotate-half RoPE with ``cos = cos_cache[position_ids]``, ``sin = sin_cache[position_ids]``.

    q, k: [b, s, heads, head_dim] (unsqueeze_dim=2) or [b, heads, s, head_dim] (1);
    position_ids: [b, s] (or broadcastable to it); cos_cache, sin_cache: [max_positions, r]
    with r <= head_dim (partial rotary: the first r channels rotate).
    """
    cos = cos_cache[position_ids]  # [b, s, r]
    sin = sin_cache[position_ids]
    return torch_rope_with_explicit_cos_sin(q, k, cos, sin, unsqueeze_dim)


@torch_rope_with_cos_sin_cache.register_fake
def _rope_cos_sin_cache_fake(q, k, position_ids, cos_cache, sin_cache, unsqueeze_dim=2):
    return torch.empty_like(q), torch.empty_like(k)
