"""The ``flashinfer`` attention backend (``attn_backend: flashinfer``): FlashInfer's paged kernels.

Semantics are the cached-attention contract's (same as the ``torch`` backend); the cache is the
contract's HND paged cache, which FlashInfer reads as is. Per step:

1. ``flashinfer_prepare_metadata`` (inserted once, in the graph): for every new token its batch
   row and position, for the append kernel (device ops only, so CUDA-graph safe).
2. the host hook ``flashinfer_host_prepare`` (after the step's H2D copy, outside CUDA graphs)
   plans FlashInfer's wrappers once per layer kind (``flashinfer_planner.py`` explains the
   wrappers and the re-plan policy).
3. ``flashinfer_attention_with_cache`` (every layer): appends the new k/v to the pages
   (FlashInfer's append kernel), then runs the prefill wrapper on the prefill tokens and the decode
   wrapper on the decode tokens (CUDA cores, or tensor cores from a GQA group of 4).

Supported: fp16 and bf16 (query and cache in the same dtype), head_dim 64 / 128 / 256, any page
size, GQA (any group size), sliding window, logit soft-cap, custom scale, mixed prefill/decode
batches, chunked prefill, CUDA-graph capture of decode-only batches. Rejected at build time:
fp32 (FlashInfer has no fp32 kernels), other head sizes, attention sinks (the fa2 wrappers of
FlashInfer 0.6 drop the ``sinks`` argument; only its trtllm-gen kernels apply it), and a missing
``flashinfer`` package (a ``ConfigError`` that says how to install it).

Nothing here imports ``flashinfer`` at import time: the backend is always registered.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor
from torch.fx import Node

from ...shim.sequence_info import SequenceInfo
from ...utils.errors import ConfigError
from .descriptor import (
    AttentionDescriptor,
    AttentionRegistry,
    UnsupportedAttentionError,
    attention_args,
    node_tensor,
)
from .flashinfer_kernels import INSTALL_HINT, FlashInferKernels, flashinfer_available
from .flashinfer_planner import FlashInferPlanner, WrapperFactory

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
SUPPORTED_HEAD_DIMS = (64, 128, 256)
_OP = "flashinfer_attention_with_cache"


# ----------------------------------------------------------------------------------------------
# planners: one per SequenceInfo (its layer kinds and captured sizes), kernels shared per device
# ----------------------------------------------------------------------------------------------
_KERNELS: dict[torch.device, WrapperFactory] = {}
_PLANNERS: weakref.WeakKeyDictionary[SequenceInfo, FlashInferPlanner] = weakref.WeakKeyDictionary()
# batch_info_host.data_ptr() of a SequenceInfo -> its planner: how the op finds its planner
_BY_BATCH_INFO: dict[int, weakref.ref[FlashInferPlanner]] = {}
# per device, for calls whose batch no hook planned (planned from the op's own tensors)
_FALLBACK: dict[torch.device, FlashInferPlanner] = {}


def _device_key(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def kernels_for(device: str | torch.device) -> WrapperFactory:
    """The wrapper factory of ``device``: FlashInfer's (with the device's workspace), made on
    first use, unless ``install_kernels`` put another one there."""
    key = _device_key(device)
    kernels = _KERNELS.get(key)
    if kernels is None:
        kernels = _KERNELS[key] = FlashInferKernels(key)
    return kernels


def install_kernels(
    device: str | torch.device, kernels: WrapperFactory | None
) -> WrapperFactory | None:
    """Use ``kernels`` on ``device`` (None: back to FlashInfer's); returns the previous factory.
    Planners made from here on use it. Tests run the host logic with torch kernels this way."""
    key = _device_key(device)
    previous = _KERNELS.pop(key, None)
    _FALLBACK.pop(key, None)
    if kernels is not None:
        _KERNELS[key] = kernels
    return previous


def planner_for(info: SequenceInfo) -> FlashInferPlanner | None:
    """The planner the host hook made for ``info`` (None before its first step)."""
    return _PLANNERS.get(info)


def fallback_planner(device: str | torch.device) -> FlashInferPlanner:
    """The planner of calls on ``device`` whose batch the host hook did not plan."""
    key = _device_key(device)
    planner = _FALLBACK.get(key)
    if planner is None:
        planner = _FALLBACK[key] = FlashInferPlanner(kernels_for(key))
    return planner


def flashinfer_host_prepare(info: SequenceInfo) -> None:
    """The host prepare hook: plan this step of ``info`` for every layer kind it has run."""
    key = _device_key(info.device)
    if key.type != "cuda" and key not in _KERNELS:
        return  # nothing can run here; the op says so if it is called
    planner = _PLANNERS.get(info)
    if planner is None:
        planner = _PLANNERS[info] = FlashInferPlanner(kernels_for(key))
    planner.prepare_step(info)
    _BY_BATCH_INFO[info.get_arg("batch_info_host").data_ptr()] = weakref.ref(planner)


def _planner_for_call(device: torch.device, batch_info_host: Tensor) -> FlashInferPlanner:
    ref = _BY_BATCH_INFO.get(batch_info_host.data_ptr())
    planner = ref() if ref is not None else None
    return planner if planner is not None else fallback_planner(device)


# ----------------------------------------------------------------------------------------------
# validation (host-only, cheap)
# ----------------------------------------------------------------------------------------------
def check_attention_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_cache: Tensor,
    sliding_window: int | None,
    logit_cap: float | None,
    sinks: Tensor | None,
) -> None:
    """Raise ``ValueError`` for anything the FlashInfer path does not handle."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"{_OP}: q/k/v must be [b, s, heads, head_dim] (bsnd), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}."
        )
    num_heads, head_dim = q.shape[2], q.shape[3]
    num_kv_heads = k.shape[2]
    if kv_cache.dim() != 5 or kv_cache.shape[1] != 2:
        raise ValueError(
            f"{_OP}: kv_cache must be [num_pages, 2, num_kv_heads, page_size, "
            f"head_dim] (HND), got {tuple(kv_cache.shape)}."
        )
    if (
        (kv_cache.shape[2], kv_cache.shape[4]) != (num_kv_heads, head_dim)
        or tuple(v.shape[2:]) != (num_kv_heads, head_dim)
        or k.shape[3] != head_dim
    ):
        raise ValueError(
            f"{_OP}: kv_cache {tuple(kv_cache.shape)}, k {tuple(k.shape)} and v "
            f"{tuple(v.shape)} disagree on num_kv_heads / head_dim."
        )
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(
            f"{_OP}: num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}."
        )
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"{_OP}: head_dim={head_dim} is not supported (FlashInfer kernels: "
            f"{SUPPORTED_HEAD_DIMS}); use attn_backend 'triton' or 'torch'."
        )
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{_OP}: q has dtype {q.dtype}; FlashInfer supports fp16 and bf16.")
    for name, t in (("k", k), ("v", v), ("kv_cache", kv_cache)):
        if t.dtype != q.dtype:
            raise ValueError(
                f"{_OP}: {name} has dtype {t.dtype} but q has {q.dtype}; query, "
                "new keys/values and the KV cache must share one dtype (set "
                "kv_cache_config.dtype to 'auto')."
            )
    if sinks is not None:
        raise ValueError(
            f"{_OP}: attention sinks are not supported by the FlashInfer backend; "
            "use attn_backend 'triton' or 'torch'."
        )
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"{_OP}: sliding_window must be >= 1 (or None), got {sliding_window}.")
    if logit_cap is not None and logit_cap <= 0:
        raise ValueError(f"{_OP}: logit_cap must be > 0 (or None), got {logit_cap}.")


def _tokens_view(x: Tensor) -> Tensor:
    """[b, s, heads, d] -> [b * s, heads, d] with a contiguous last dim (a view when possible)."""
    x = x.reshape(-1, x.shape[2], x.shape[3])
    return x if x.stride(-1) == 1 else x.contiguous()


# ----------------------------------------------------------------------------------------------
# the ops
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("auto_deploy::flashinfer_prepare_metadata", mutates_args=())
def flashinfer_prepare_metadata(
    position_ids: Tensor,  # [1, T] or [B, 1] int64: the position of every new token
    cu_seqlen: Tensor,  # [B + 1] int32
    last_page_len: Tensor,  # [B] int32
) -> tuple[Tensor, Tensor, Tensor]:
    """Per new token its batch row and position (int32, [T]) for the append kernel, and the
    step's last-page lengths. Device ops only: no host synchronisation, CUDA-graph safe."""
    positions = position_ids.reshape(-1).to(torch.int32, copy=True)
    tokens = torch.arange(positions.numel(), dtype=torch.int32, device=positions.device)
    # the row of token t is the number of rows that end at or before t
    batch_indices = torch.searchsorted(cu_seqlen[1:], tokens, right=True, out_int32=True)
    return batch_indices, positions, last_page_len.clone()


@flashinfer_prepare_metadata.register_fake
def _flashinfer_prepare_metadata_fake(position_ids, cu_seqlen, last_page_len):
    num_tokens = position_ids.numel()
    return (
        position_ids.new_empty(num_tokens, dtype=torch.int32),
        position_ids.new_empty(num_tokens, dtype=torch.int32),
        torch.empty_like(last_page_len),
    )


@torch.library.custom_op("auto_deploy::flashinfer_attention_with_cache", mutates_args=("kv_cache",))
def flashinfer_attention_with_cache(
    q: Tensor,  # [b, s, num_heads, head_dim]; b * s = total tokens
    k: Tensor,  # [b, s, num_kv_heads, head_dim]
    v: Tensor,  # [b, s, num_kv_heads, head_dim]
    batch_info_host: Tensor,  # CPU [3]: num_prefill_seqs, num_prefill_tokens, num_decode_seqs
    cu_seqlen: Tensor,  # [B + 1]
    input_pos: Tensor,  # [B] (the positions come from flashinfer_prepare_metadata)
    cache_loc: Tensor,  # [total pages]
    cu_num_pages: Tensor,  # [B + 1]
    append_batch_indices: Tensor,  # [T] int32, from flashinfer_prepare_metadata
    append_positions: Tensor,  # [T] int32
    last_page_len: Tensor,  # [B] int32
    kv_cache: Tensor,  # [num_pages, 2, num_kv_heads, page_size, head_dim]
    scale: float | None = None,
    sliding_window: int | None = None,
    logit_cap: float | None = None,
    sinks: Tensor | None = None,
) -> Tensor:
    """Paged-cache attention for a packed batch (prefill sequences first, then decode)."""
    check_attention_inputs(q, k, v, kv_cache, sliding_window, logit_cap, sinks)
    planner = _planner_for_call(q.device, batch_info_host)
    q_tokens, k_tokens, v_tokens = _tokens_view(q), _tokens_view(k), _tokens_view(v)
    config = planner.config_for(q_tokens, kv_cache, scale, sliding_window, logit_cap)
    capturing = q.is_cuda and torch.cuda.is_current_stream_capturing()
    planned = planner.wrappers_for(
        config,
        batch_info_host,
        cu_seqlen,
        cu_num_pages,
        cache_loc,
        last_page_len,
        capturing=capturing,
    )
    _, num_prefill_tokens, num_decode = (int(x) for x in batch_info_host.tolist())
    covered = num_prefill_tokens + num_decode  # rows past it (none from SequenceInfo) get zeros

    planner.factory.append(
        k_tokens[:covered],
        v_tokens[:covered],
        append_batch_indices[:covered],
        append_positions[:covered],
        kv_cache,
        cache_loc,
        cu_num_pages,
        last_page_len,
    )
    num_tokens = q_tokens.shape[0]
    out = (torch.empty if covered >= num_tokens else torch.zeros)(
        q_tokens.shape, dtype=q.dtype, device=q.device
    )
    if planned.prefill is not None:
        planned.prefill.run(q_tokens[:num_prefill_tokens], kv_cache, out=out[:num_prefill_tokens])
    if planned.decode is not None:
        planned.decode.run(
            q_tokens[num_prefill_tokens:covered], kv_cache, out=out[num_prefill_tokens:covered]
        )
    return out.view(q.shape)


@flashinfer_attention_with_cache.register_fake
def _flashinfer_attention_with_cache_fake(
    q,
    k,
    v,
    batch_info_host,
    cu_seqlen,
    input_pos,
    cache_loc,
    cu_num_pages,
    append_batch_indices,
    append_positions,
    last_page_len,
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
@AttentionRegistry.register("flashinfer")
class FlashInferCachedAttention(AttentionDescriptor):
    """FlashInfer's paged prefill/decode kernels (CUDA; fp16/bf16; head_dim 64/128/256): GQA,
    sliding window, logit soft-cap; CUDA-graph-safe decode. Needs the ``flashinfer`` package."""

    @classmethod
    def get_cached_attention_op(cls):
        return torch.ops.auto_deploy.flashinfer_attention_with_cache

    @classmethod
    def get_prepare_metadata_op(cls):
        return torch.ops.auto_deploy.flashinfer_prepare_metadata, 3

    @classmethod
    def get_host_prepare_function(cls):
        return flashinfer_host_prepare

    @classmethod
    def check_supported(cls, node: Node) -> None:
        if not flashinfer_available():
            raise ConfigError(
                f"attn_backend 'flashinfer' needs the flashinfer package, which is not "
                f"installed: {INSTALL_HINT}. Or choose attn_backend 'triton' or 'torch'."
            )
        super().check_supported(node)

    @classmethod
    def unsupported_features(cls, node: Node) -> list[str]:
        problems = super().unsupported_features(node)
        args = attention_args(node)
        query = node_tensor(args["query"])
        if query is not None:
            head_dim = int(query.shape[-1])
            if head_dim not in SUPPORTED_HEAD_DIMS:
                problems.append(
                    f"head_dim {head_dim} (FlashInfer's kernels: "
                    f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))})"
                )
            if query.dtype not in SUPPORTED_DTYPES:
                problems.append(
                    f"dtype {query.dtype} (FlashInfer supports float16 and bfloat16; "
                    "load the model in one of them)"
                )
        if args["sinks"] is not None:
            problems.append(
                "attention sinks (FlashInfer's fa2 paged wrappers ignore them; use "
                "attn_backend 'triton' or 'torch')"
            )
        return problems

    @classmethod
    def get_cache_initializers(cls, node, kv_cache_config):
        handlers = super().get_cache_initializers(node, kv_cache_config)
        query = node_tensor(attention_args(node)["query"])
        for handler in handlers.values():
            if query is not None and handler.dtype != query.dtype:
                raise UnsupportedAttentionError(
                    f"attention backend 'flashinfer' cannot replace {node.name}: the KV cache "
                    f"dtype {handler.dtype} differs from the model's {query.dtype}; FlashInfer "
                    "needs both the same. Set kv_cache_config.dtype to 'auto'."
                )
        return handlers
