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
from torch.fx import Node

from .descriptor import AttentionDescriptor, AttentionRegistry, attention_args, node_tensor
from .triton_launch import (
    MAX_HEAD_DIM,
    SUPPORTED_DTYPES,
    cpu_interpreter_problem,
    triton_paged_attention,
)


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


@triton_attention_with_cache.register_fake
def _triton_attention_with_cache_fake(
    q,
    k,
    v,
    batch_info_host,
    cu_seqlen,
    input_pos,
    cache_loc,
    cu_num_pages,
    kv_cache,
    scale=None,
    sliding_window=None,
    logit_cap=None,
    sinks=None,
):
    return q.new_empty(q.shape)


# ----------------------------------------------------------------------------------------------
# the backend
# ----------------------------------------------------------------------------------------------
@AttentionRegistry.register("triton")
class TritonCachedAttention(AttentionDescriptor):
    """Triton kernels over the contract's paged KV cache: GQA, sliding window, logit cap, sinks;
    fp16/bf16/fp32; head_dim <= 256. On CPU only under ``TRITON_INTERPRET=1`` (slow; tests)."""

    @classmethod
    def get_cached_attention_op(cls):
        return torch.ops.auto_deploy.triton_attention_with_cache

    @classmethod
    def unsupported_features(cls, node: Node) -> list[str]:
        problems = super().unsupported_features(node)
        args = attention_args(node)
        if importlib.util.find_spec("triton") is None:
            return [*problems, "triton is not installed (pip install 'autodeploy[triton]')"]
        query = node_tensor(args["query"])
        if query is not None:
            head_dim = int(query.shape[-1])
            if head_dim > MAX_HEAD_DIM:
                problems.append(f"head_dim {head_dim} > {MAX_HEAD_DIM}")
            if query.dtype not in SUPPORTED_DTYPES:
                problems.append(f"dtype {query.dtype} (supported: fp16, bf16, fp32)")
            if query.device.type == "cpu":
                problem = cpu_interpreter_problem()
                if problem is not None:
                    problems.append(problem)
        return problems
