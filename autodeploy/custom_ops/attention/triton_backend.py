"""Triton attention backend: the ``auto_deploy::triton_attention_with_cache`` op and its
``triton`` descriptor.

Semantics are those of the cached-attention contract (same as the ``torch`` backend): for each
new token at position p of sequence i, write its k/v into the cache, then attend causally to
the sequence's cached keys [0, p] (sliding window, logit soft-cap, sinks, GQA), fp32 softmax
and accumulation, output in q's dtype. How the kernels are launched (prefill, split-K decode,
launch configurations, what is rejected): ``triton_launch.py``.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..cached_op import register_convention_fake
from .descriptor import ATTENTION_CONVENTION, AttentionDescriptor, AttentionRegistry
from .triton_launch import TRITON_ATTENTION_LIMITS, cpu_interpreter_problem, triton_paged_attention


# ----------------------------------------------------------------------------------------------
# the op
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("auto_deploy::triton_attention_with_cache", mutates_args=("kv_cache",))
def triton_attention_with_cache(
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
    """Paged-cache attention for a packed batch (prefill sequences first, then decode)."""
    return triton_paged_attention(
        q,
        k,
        v,
        batch_info_host,
        cu_seqlen,
        input_pos,
        cache_loc,
        cu_num_pages,
        kv_cache,
        scale,
        sliding_window,
        logit_cap,
        sinks,
    )


register_convention_fake(triton_attention_with_cache, ATTENTION_CONVENTION)


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
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install 'autodeploy[triton]')"
        if device is None or device.type == "cuda":
            return None
        if device.type == "cpu":
            return cpu_interpreter_problem()
        return f"Triton kernels run on CUDA (or on CPU in the interpreter), not on {device.type}"
