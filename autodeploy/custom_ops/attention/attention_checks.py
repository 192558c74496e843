"""Attention input validation, written once for every backend and both times it runs.

``attention_problems(limits, q, k, v, ...)`` lists what a backend with ``limits`` cannot do
with these inputs. It takes real tensors (the ops' run-time check, ``check_attention_inputs``)
and fake tensors read from the graph (the descriptors' build-time ``supports``), so a build
that passes cannot fail the same check at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionLimits:
    """What one backend's kernels accept."""

    dtypes: tuple[torch.dtype, ...]
    max_head_dim: int | None = None  # None: any
    head_dims: tuple[int, ...] | None = None  # None: any up to max_head_dim
    sinks: bool = True
    same_dtype: bool = False  # q, k, v and the cache in one dtype
    other: str = "'torch'"  # the backend to suggest instead


REFERENCE_LIMITS = AttentionLimits(dtypes=(torch.float16, torch.bfloat16, torch.float32))


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def attention_problems(
    limits: AttentionLimits,
    q: torch.Tensor | None,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    kv_cache: torch.Tensor | None = None,
    sliding_window: int | None = None,
    logit_cap: float | None = None,
    sinks: object = None,
) -> list[str]:
    """What a backend with ``limits`` cannot do here ([] if nothing). ``q``/``k``/``v`` are
    ``[b, s, heads, head_dim]``; ``kv_cache`` (run time only) ``[pages, 2, kv_heads, page,
    head_dim]``; tensors that are None (no shape metadata) are not checked."""
    problems: list[str] = []
    if q is not None and k is not None and v is not None:
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            return [
                f"q/k/v must be [b, s, heads, head_dim] (bsnd), got {tuple(q.shape)}, "
                f"{tuple(k.shape)}, {tuple(v.shape)}"
            ]
        num_heads, head_dim, num_kv_heads = int(q.shape[2]), int(q.shape[3]), int(k.shape[2])
        if num_kv_heads == 0 or num_heads % num_kv_heads:
            problems.append(
                f"{num_heads} query heads are not a multiple of {num_kv_heads} kv heads"
            )
        if tuple(v.shape[2:]) != (num_kv_heads, head_dim) or k.shape[3] != head_dim:
            problems.append(
                f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} disagree on "
                "num_kv_heads / head_dim (K and V share one paged cache)"
            )
        if limits.max_head_dim is not None and head_dim > limits.max_head_dim:
            problems.append(f"head_dim={head_dim} > {limits.max_head_dim}")
        if limits.head_dims is not None and head_dim not in limits.head_dims:
            problems.append(
                f"head_dim={head_dim} is not supported (kernels for "
                f"{', '.join(map(str, limits.head_dims))})"
            )
        if kv_cache is not None:
            problems += _cache_problems(kv_cache, num_kv_heads, head_dim)
        for name, tensor in (("q", q), ("k", k), ("v", v), ("kv_cache", kv_cache)):
            if tensor is not None and tensor.dtype not in limits.dtypes:
                problems.append(
                    f"{name} has dtype {tensor.dtype} (supported: {_dtype_names(limits.dtypes)})"
                )
                break
            if tensor is not None and limits.same_dtype and tensor.dtype != q.dtype:
                problems.append(
                    f"{name} has dtype {tensor.dtype} but q has {q.dtype}: query, new keys/values "
                    "and the KV cache must share one dtype (set kv_cache_config.dtype to 'auto')"
                )
    if sinks is not None and not limits.sinks:
        problems.append(f"attention sinks are not supported (use attn_backend {limits.other})")
    elif isinstance(sinks, torch.Tensor) and q is not None and sinks.numel() != q.shape[2]:
        problems.append(
            f"sinks must have one value per query head ({q.shape[2]}), got {tuple(sinks.shape)}"
        )
    if isinstance(sliding_window, int) and sliding_window < 1:
        problems.append(f"sliding_window={sliding_window} (must be >= 1 or None)")
    if isinstance(logit_cap, (int, float)) and logit_cap <= 0:
        problems.append(f"logit_cap={logit_cap} (must be > 0 or None)")
    return problems


def _cache_problems(kv_cache: torch.Tensor, num_kv_heads: int, head_dim: int) -> list[str]:
    if kv_cache.dim() != 5 or kv_cache.shape[1] != 2:
        return [
            "kv_cache must be [num_pages, 2, num_kv_heads, page_size, head_dim] (HND), got "
            f"{tuple(kv_cache.shape)}"
        ]
    if (int(kv_cache.shape[2]), int(kv_cache.shape[4])) != (num_kv_heads, head_dim):
        return [
            f"kv_cache {tuple(kv_cache.shape)} and k/v disagree on num_kv_heads / head_dim "
            f"({num_kv_heads}, {head_dim})"
        ]
    return []


def check_attention_inputs(
    op_name: str,
    limits: AttentionLimits,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    sliding_window: int | None,
    logit_cap: float | None,
    sinks: torch.Tensor | None,
) -> None:
    """The run-time check of a cached-attention op: ``ValueError`` naming every problem."""
    problems = attention_problems(limits, q, k, v, kv_cache, sliding_window, logit_cap, sinks)
    if problems:
        raise ValueError(f"{op_name}: " + "; ".join(problems) + ".")
