"""Triton attention backend: the ``auto_deploy::triton_attention_with_cache`` op and its
``triton`` descriptor.

Semantics are those of the cached-attention contract (same as the ``torch`` backend): for each
new token at position p of sequence i, write its k/v into the cache, then attend causally to
the sequence's cached keys [0, p] (sliding window, logit soft-cap, sinks, GQA), fp32 softmax
and accumulation, output in q's dtype. How the kernels are launched (prefill, split-K decode,
launch configurations, what is rejected): ``triton_launch.py``.
"""

from __future__ import annotations

import torch

from ..cached_op import define_cached_op
from ..triton_availability import triton_unavailable
from .descriptor import ATTENTION_CONVENTION, AttentionDescriptor, AttentionRegistry
from .triton_launch import TRITON_ATTENTION_LIMITS, triton_paged_attention

# ----------------------------------------------------------------------------------------------
# the op
# ----------------------------------------------------------------------------------------------
# Paged-cache attention for a packed batch (prefill sequences first, then decode); the schema
# and fake come from the attention calling convention.
triton_attention_with_cache = define_cached_op(
    "auto_deploy::triton_attention_with_cache", triton_paged_attention, ATTENTION_CONVENTION
)


# ----------------------------------------------------------------------------------------------
# the backend
# ----------------------------------------------------------------------------------------------
@AttentionRegistry.register("triton")
class TritonCachedAttention(AttentionDescriptor):
    """Triton kernels over the contract's paged KV cache: GQA, sliding window, logit cap, sinks;
    fp16/bf16/fp32; head_dim <= 256. ``auto`` picks it on CUDA. On CPU only under
    ``TRITON_INTERPRET=1`` (slow; tests)."""

    auto_priority = {"cuda": 10}
    limits = TRITON_ATTENTION_LIMITS

    @classmethod
    def get_cached_op(cls):
        return torch.ops.auto_deploy.triton_attention_with_cache

    @classmethod
    def unavailable(cls, device: torch.device | None) -> str | None:
        return triton_unavailable(device)
