"""Launching the Triton paged-attention kernels for one packed batch (``triton_paged_attention``).

Semantics are those of the cached-attention contract (same as the ``torch`` backend): for each
new token at position p of sequence i, write its k/v into the cache, then attend causally to
the sequence's cached keys [0, p] (sliding window, logit soft-cap, sinks, GQA), fp32 softmax
and accumulation, output in q's dtype.

One call launches, with every split decided on the host from ``batch_info_host`` (no device
synchronisation):

1. for the prefill sequences (the first ``num_prefill_tokens`` tokens): ``kv_append_kernel``
   writes their new k/v into the pages (``triton_kv_append.py``), then ``paged_prefill_kernel``
   attends (``triton_paged_prefill.py``);
2. for the decode sequences (one token each, after the prefill tokens):
   ``paged_decode_partial_kernel``, which also writes the new k/v, then
   ``paged_decode_reduce_kernel`` when the key range is split (``triton_paged_decode.py``).
   A decode-only step is therefore one or two launches.

Launch configuration (GPU; measured on an H100, see ``_prefill_config``): prefill tiles of
BLOCK_M = 64-128 query rows (tokens x padded GQA group) by BLOCK_N = 32-128 keys, 4-8 warps,
2 stages; grid (num_prefill_tokens // BLOCK_Q + num_prefill_seqs, num_kv_heads). Decode:
grid (num_decode, num_kv_heads, num_splits) with BLOCK_N = 64 keys (32 for fp32 or
head_dim > 128), 4 warps; ``num_splits`` fills ~2 waves of SMs but never exceeds the key
tiles of a sequence whose length is estimated from shapes only (``choose_decode_splits``):

- uncaptured: the pages in ``cache_loc`` per sequence;
- while a CUDA graph is captured (``shim.capture_phase``, opened by the CUDA-graph runner around
  warm-ups and capture): the phase's ``max_kv_len`` (``max_seq_len``), because the count is frozen
  into the graph and the capture batch (padding rows, one page each) says nothing about the
  contexts a replay will meet. A replay with short contexts then leaves most splits with an empty
  key range; they write m = NEG_LARGE, l = 0 and weigh 0 in the reduce.

The interpreter (CPU) uses small tiles and 1 split.

Supported: fp16 / bf16 / fp32 (q and cache; fp32 dots use IEEE precision, not TF32), any
head_dim up to 256 (padded to a power of two and masked), any page size, GQA with any group
size, sliding window, logit cap and sinks. Rejected with a ``ValueError``: head_dim > 256,
other dtypes, mismatched cache shapes, ``sliding_window < 1``, ``logit_cap <= 0``.

On CPU, Triton runs only in its interpreter: the kernels are ``TritonKernel``s
(``_triton_kernel.py``), interpreted per launch for CPU tensors when ``TRITON_INTERPRET=1`` is
set at that time (whenever triton was imported). The kernels are imported lazily, so this module
itself registers the op without triton installed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

from ...shim.capture_phase import active_capture_phase
from ...utils.numbers import ceil_div, next_power_of_2
from ..triton_availability import triton_unavailable
from .attention_checks import AttentionLimits, check_attention_inputs

# What the kernels accept: checked at build time (the descriptor) and per call (the op).
TRITON_ATTENTION_LIMITS = AttentionLimits(
    dtypes=(torch.float16, torch.bfloat16, torch.float32), max_head_dim=256
)
MAX_DECODE_SPLITS = 64
_OP = "triton_attention_with_cache"


# ----------------------------------------------------------------------------------------------
# kernels (imported on first use) and launch configuration
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kernels:
    append: ModuleType
    prefill: ModuleType
    decode: ModuleType


@functools.cache
def _kernels() -> _Kernels:
    from . import triton_kv_append, triton_paged_decode, triton_paged_prefill

    return _Kernels(triton_kv_append, triton_paged_prefill, triton_paged_decode)


def cpu_interpreter_problem() -> str | None:
    """Why the kernels cannot run on CPU tensors now (None if they can: triton is installed and
    ``TRITON_INTERPRET=1`` is set; checked per launch, whenever triton was imported)."""
    return triton_unavailable(torch.device("cpu"))


@dataclass(frozen=True)
class _LaunchConfig:
    block_m: int  # query rows per prefill tile (tokens x padded group)
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int


def _prefill_config(
    block_d: int, dtype: torch.dtype, on_gpu: bool, tokens_per_seq: int
) -> _LaunchConfig:
    """Tile sizes measured on an H100 (bf16, 32 query / 8 kv heads, 1-8 sequences)."""
    if not on_gpu:  # interpreter: few, small programs
        return _LaunchConfig(block_m=32, block_n=16, num_warps=1, num_stages=1)
    if dtype == torch.float32 or block_d > 128:
        return _LaunchConfig(
            block_m=64, block_n=32, num_warps=8 if block_d > 64 else 4, num_stages=2
        )
    if block_d <= 64:
        return _LaunchConfig(block_m=64, block_n=64, num_warps=4, num_stages=2)
    if tokens_per_seq >= 2048:  # long prompts: big tiles
        return _LaunchConfig(block_m=128, block_n=128, num_warps=8, num_stages=2)
    return _LaunchConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)


def _decode_config(block_d: int, dtype: torch.dtype, on_gpu: bool) -> _LaunchConfig:
    """block_m is the minimum query rows of a tile (GQA group padded; tl.dot needs 16)."""
    if not on_gpu:
        return _LaunchConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)
    block_n = 32 if (dtype == torch.float32 or block_d > 128) else 64
    return _LaunchConfig(block_m=16, block_n=block_n, num_warps=4, num_stages=2)


@functools.cache
def _multiprocessor_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def decode_num_splits(
    num_decode: int, num_kv_heads: int, est_kv_len: int, block_n: int, device: torch.device
) -> int:
    """Key-range splits per decode sequence: enough programs to fill the GPU twice over,
    never more splits than key tiles (``est_kv_len`` comes from tensor shapes, not values)."""
    if device.type != "cuda":
        return 1
    programs = max(num_decode * num_kv_heads, 1)
    wanted = ceil_div(2 * _multiprocessor_count(device), programs)
    return max(1, min(wanted, ceil_div(est_kv_len, block_n), MAX_DECODE_SPLITS))


def choose_decode_splits(
    num_decode: int,
    num_seqs: int,
    num_kv_heads: int,
    num_cached_pages: int,
    page_size: int,
    block_n: int,
    device: torch.device,
) -> int:
    """The split count of a decode launch; see the module docstring for the length estimate.

    Under a capture phase, the phase records the count (the runner reports it per batch size).
    """
    phase = active_capture_phase()
    if phase is None:
        est_kv_len = max(num_cached_pages // num_seqs, 1) * page_size
        return decode_num_splits(num_decode, num_kv_heads, est_kv_len, block_n, device)
    num_splits = decode_num_splits(num_decode, num_kv_heads, phase.max_kv_len, block_n, device)
    phase.decode_splits.add(num_splits)
    return num_splits


# ----------------------------------------------------------------------------------------------
# the launcher
# ----------------------------------------------------------------------------------------------
def _tokens_view(x: Tensor) -> Tensor:
    """[b, s, heads, d] -> [b * s, heads, d] with a contiguous last dim (a view when possible)."""
    x = x.reshape(-1, x.shape[2], x.shape[3])
    return x if x.stride(-1) == 1 else x.contiguous()


def triton_paged_attention(
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
    num_splits: int | None = None,
) -> Tensor:
    """The op's implementation; ``num_splits`` overrides the decode split heuristic (tests)."""
    check_attention_inputs(
        _OP, TRITON_ATTENTION_LIMITS, q, k, v, kv_cache, sliding_window, logit_cap, sinks
    )
    if q.device.type != "cuda":
        problem = cpu_interpreter_problem()
        if problem is not None:
            raise RuntimeError(f"{_OP} on {q.device}: {problem}.")
    kernels = _kernels()
    num_prefill, num_prefill_tokens, num_decode = (int(x) for x in batch_info_host.tolist())
    num_seqs = num_prefill + num_decode
    num_heads, head_dim = q.shape[2], q.shape[3]
    num_kv_heads = k.shape[2]
    page_size = kv_cache.shape[3]
    group = num_heads // num_kv_heads
    block_d = max(16, next_power_of_2(head_dim))
    on_gpu = q.device.type == "cuda"
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    dot_precision = "ieee" if kv_cache.dtype == torch.float32 else "tf32"

    q3, k3, v3 = _tokens_view(q), _tokens_view(k), _tokens_view(v)
    num_tokens = q3.shape[0]
    covered = num_prefill_tokens + num_decode
    out = (torch.empty if covered >= num_tokens else torch.zeros)(
        (num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device
    )
    if num_seqs == 0:
        return out.view(q.shape)

    cache_strides = (kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3))
    if kv_cache.stride(4) != 1:
        raise ValueError(f"{_OP}: kv_cache's head_dim must be contiguous.")
    common = dict(  # noqa: C408
        scale=scale,
        logit_cap=float(logit_cap or 0.0),
        sliding_window=int(sliding_window or 0),
        HAS_WINDOW=sliding_window is not None,
        HAS_CAP=logit_cap is not None,
        HAS_SINKS=sinks is not None,
        DOT_PRECISION=dot_precision,
    )
    sinks_arg = sinks if sinks is not None else out  # any pointer; never read without HAS_SINKS

    # 1. prefill sequences (the first num_prefill_tokens tokens): write their new k/v into the
    #    pages, then attend
    if num_prefill:
        max_new_tokens = num_prefill_tokens - (num_prefill - 1)  # the others have >= 1 each
        heads_pad = next_power_of_2(num_kv_heads)
        block_t = min(max(8192 // (heads_pad * block_d), 1), 64) if on_gpu else 16
        kernels.append.kv_append_kernel[(num_prefill, ceil_div(max_new_tokens, block_t)), q.device](
            k3,
            v3,
            kv_cache,
            cu_seqlen,
            input_pos,
            cache_loc,
            cu_num_pages,
            k3.stride(0),
            k3.stride(1),
            v3.stride(0),
            v3.stride(1),
            *cache_strides,
            NUM_KV_HEADS=num_kv_heads,
            HEADS_PAD=heads_pad,
            PAGE_SIZE=page_size,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            BLOCK_T=block_t,
            num_warps=4 if on_gpu else 1,
        )
        group_pad = next_power_of_2(group)
        cfg = _prefill_config(block_d, kv_cache.dtype, on_gpu, num_prefill_tokens // num_prefill)
        block_q = max(cfg.block_m // group_pad, 1)
        block_q = max(block_q, ceil_div(16, group_pad))  # tl.dot needs >= 16 rows
        num_tiles = num_prefill_tokens // block_q + num_prefill
        kernels.prefill.paged_prefill_kernel[(num_tiles, num_kv_heads), q.device](
            q3,
            kv_cache,
            out,
            sinks_arg,
            cu_seqlen,
            input_pos,
            cache_loc,
            cu_num_pages,
            q3.stride(0),
            q3.stride(1),
            out.stride(0),
            out.stride(1),
            *cache_strides,
            num_seqs=num_prefill,
            num_tiles=num_tiles,
            search_steps=(num_prefill - 1).bit_length(),
            GROUP=group,
            GROUP_PAD=group_pad,
            PAGE_SIZE=page_size,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            BLOCK_Q=block_q,
            BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            **common,
        )

    # 2. decode sequences: one token each, after the prefill tokens (the kernel writes k/v too)
    if num_decode:
        cfg = _decode_config(block_d, kv_cache.dtype, on_gpu)
        if num_splits is None:
            num_splits = choose_decode_splits(
                num_decode,
                num_seqs,
                num_kv_heads,
                cache_loc.shape[0],
                page_size,
                cfg.block_n,
                q.device,
            )
        single = num_splits == 1
        part_shape = (num_decode, num_heads, num_splits)
        if single:  # partials are not written
            part_m = part_l = part_acc = out
        else:
            part_m = torch.empty(part_shape, dtype=torch.float32, device=q.device)
            part_l = torch.empty(part_shape, dtype=torch.float32, device=q.device)
            part_acc = torch.empty((*part_shape, head_dim), dtype=torch.float32, device=q.device)
        kernels.decode.paged_decode_partial_kernel[
            (num_decode, num_kv_heads, num_splits), q.device
        ](
            q3,
            k3,
            v3,
            kv_cache,
            out,
            sinks_arg,
            part_m,
            part_l,
            part_acc,
            input_pos,
            cache_loc,
            cu_num_pages,
            num_prefill,
            num_prefill_tokens,
            q3.stride(0),
            q3.stride(1),
            k3.stride(0),
            k3.stride(1),
            v3.stride(0),
            v3.stride(1),
            out.stride(0),
            out.stride(1),
            *cache_strides,
            num_heads=num_heads,
            num_splits=num_splits,
            GROUP=group,
            GROUP_PAD=max(cfg.block_m, next_power_of_2(group)),
            PAGE_SIZE=page_size,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            BLOCK_N=cfg.block_n,
            SINGLE_SPLIT=single,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            **common,
        )
        if not single:
            kernels.decode.paged_decode_reduce_kernel[(num_decode, num_heads), q.device](
                out,
                sinks_arg,
                part_m,
                part_l,
                part_acc,
                num_prefill_tokens,
                out.stride(0),
                out.stride(1),
                num_heads,
                num_splits,
                SPLITS_PAD=next_power_of_2(num_splits),
                HEAD_DIM=head_dim,
                BLOCK_D=block_d,
                HAS_SINKS=sinks is not None,
                num_warps=4 if on_gpu else 1,
            )
    return out.view(q.shape)
