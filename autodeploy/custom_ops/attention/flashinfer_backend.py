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

from ...shim.sequence_info import SequenceInfo
from ...utils.node_args import node_val
from ..cached_op import define_cached_op
from .attention_checks import AttentionLimits, check_attention_inputs
from .descriptor import (
    ATTENTION_CONVENTION,
    AttentionDescriptor,
    AttentionRegistry,
    UnsupportedAttentionError,
    attention_args,
)
from .flashinfer_kernels import INSTALL_HINT, FlashInferKernels, flashinfer_available
from .flashinfer_planner import FlashInferPlanner, WrapperFactory

# What FlashInfer's kernels accept: checked at build time (the descriptor) and per call (the op).
FLASHINFER_ATTENTION_LIMITS = AttentionLimits(
    dtypes=(torch.float16, torch.bfloat16),
    head_dims=(64, 128, 256),
    sinks=False,  # FlashInfer 0.6's fa2 paged wrappers drop the sinks argument
    same_dtype=True,
    other="'triton' or 'torch'",
)
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


def _flashinfer_attention_with_cache(
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
    check_attention_inputs(
        _OP, FLASHINFER_ATTENTION_LIMITS, q, k, v, kv_cache, sliding_window, logit_cap, sinks
    )
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


# The prepare-metadata outputs the op takes after the standard metadata.
PREPARED_ARGS = ("append_batch_indices", "append_positions", "last_page_len")
flashinfer_attention_with_cache = define_cached_op(
    "auto_deploy::flashinfer_attention_with_cache",
    _flashinfer_attention_with_cache,
    ATTENTION_CONVENTION,
    prepared=PREPARED_ARGS,
)


# ----------------------------------------------------------------------------------------------
# the backend
# ----------------------------------------------------------------------------------------------
@AttentionRegistry.register("flashinfer")
class FlashInferCachedAttention(AttentionDescriptor):
    """FlashInfer's paged prefill/decode kernels (CUDA; fp16/bf16; head_dim 64/128/256): GQA,
    sliding window, logit soft-cap; CUDA-graph-safe decode. Needs the ``flashinfer`` package.
    Chosen by name only (``auto`` takes Triton on CUDA)."""

    limits = FLASHINFER_ATTENTION_LIMITS
    prepared_args = PREPARED_ARGS

    @classmethod
    def get_cached_op(cls):
        return torch.ops.auto_deploy.flashinfer_attention_with_cache

    @classmethod
    def get_prepare_metadata_op(cls):
        return torch.ops.auto_deploy.flashinfer_prepare_metadata, len(cls.prepared_args)

    @classmethod
    def get_host_prepare_function(cls):
        return flashinfer_host_prepare

    @classmethod
    def unavailable(cls, device: torch.device | None) -> str | None:
        # The device is checked per call ("CUDA devices only"): tests run the host logic on CPU
        # with torch kernels installed through ``install_kernels``.
        if not flashinfer_available():
            return f"the flashinfer package is not installed: {INSTALL_HINT}"
        return None

    @classmethod
    def get_cache_initializers(cls, node, kv_cache_config):
        handlers = super().get_cache_initializers(node, kv_cache_config)
        query = node_val(attention_args(node)["query"])
        for handler in handlers.values():
            if query is not None and handler.dtype != query.dtype:
                raise UnsupportedAttentionError(
                    f"attention backend 'flashinfer' cannot replace {node.name}: the KV cache "
                    f"dtype {handler.dtype} differs from the model's {query.dtype}; FlashInfer "
                    "needs both the same. Set kv_cache_config.dtype to 'auto'."
                )
        return handlers
