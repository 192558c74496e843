"""The ``triton`` backends of the ``ssm`` and ``causal_conv`` families: one kernel launch per
layer handles the whole packed step (prefill sequences, chunked-prefill continuations and
decodes alike).

- ``triton_cached_ssm``: one program per (sequence, head, block of head_dim channels) keeps its
  ``[P_BLOCK, state]`` slice of the SSM state in registers, starts from the slot's state (or zeros
  when ``input_pos == 0``), runs the recurrence over the sequence's new tokens (``ssm_math``:
  ``state = exp(dt*A) * state + dt * x (outer) B``, ``y = state @ C + D * x``) and writes the
  final state back to the slot. A decode is the same program with one token. The scan is
  sequential in time inside a program (not the chunked SSD formulation): prefill parallelism is
  sequences x heads x channel blocks.
- ``triton_cached_causal_conv1d``: one program per (sequence, block of channels); inputs before
  the sequence's first new token come from the slot's conv state (zeros for a new sequence); the
  last ``kernel_size - 1`` inputs become the new state. Optional fused SiLU.

CUDA tensors launch compiled kernels; CPU tensors run them in the Triton interpreter when
``TRITON_INTERPRET=1`` (tests). Kernel rules of ``_triton_kernel.py`` apply (no nested jit
helpers, ``tl.reduce`` with ``SUM_COMBINE`` instead of ``tl.sum``).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton_kernel import SUM_COMBINE, TritonKernel, next_power_of_2
from ..cached_op import register_convention_fake
from ..triton_availability import triton_unavailable
from .descriptor import (
    CAUSAL_CONV,
    SSM,
    CausalConvDescriptor,
    CausalConvRegistry,
    SSMDescriptor,
    SSMRegistry,
)
from .torch_cached_backend import split_batch


def _ssm_scan(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr,
    cu_seqlen_ptr, input_pos_ptr, slot_ptr, state_ptr, y_ptr,
    dt_min, dt_max,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, STATE: tl.constexpr,
    NUM_GROUPS: tl.constexpr, P_BLOCK: tl.constexpr, N_BLOCK: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    head = tl.program_id(1)
    p = tl.program_id(2) * P_BLOCK + tl.arange(0, P_BLOCK)
    n = tl.arange(0, N_BLOCK)
    p_mask = p < HEAD_DIM
    n_mask = n < STATE
    pn_mask = p_mask[:, None] & n_mask[None, :]
    start = tl.load(cu_seqlen_ptr + seq)
    end = tl.load(cu_seqlen_ptr + seq + 1)
    continuing = tl.load(input_pos_ptr + seq) > 0
    slot = tl.load(slot_ptr + seq).to(tl.int64)
    group = head // (NUM_HEADS // NUM_GROUPS)

    state_offsets = (slot * NUM_HEADS + head) * HEAD_DIM * STATE + p[:, None] * STATE + n[None, :]
    state = tl.load(state_ptr + state_offsets, mask=pn_mask & continuing, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + head).to(tl.float32)
    D = tl.load(D_ptr + head).to(tl.float32)
    dt_bias = tl.load(dt_bias_ptr + head).to(tl.float32)
    for token in range(start, end):
        dt = tl.load(dt_ptr + token * NUM_HEADS + head).to(tl.float32) + dt_bias
        # softplus as torch computes it (linear above 20; log1p's series for tiny exp(dt))
        e = tl.exp(dt)
        soft = tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))
        dt = tl.minimum(tl.maximum(tl.where(dt > 20.0, dt, soft), dt_min), dt_max)
        x = tl.load(x_ptr + (token * NUM_HEADS + head) * HEAD_DIM + p, mask=p_mask, other=0.0)
        x = x.to(tl.float32)
        bc_offsets = (token * NUM_GROUPS + group) * STATE + n
        B = tl.load(B_ptr + bc_offsets, mask=n_mask, other=0.0).to(tl.float32)
        C = tl.load(C_ptr + bc_offsets, mask=n_mask, other=0.0).to(tl.float32)
        state = state * tl.exp(dt * A) + (dt * x)[:, None] * B[None, :]
        y = tl.reduce(state * C[None, :], 1, SUM_COMBINE) + D * x
        tl.store(y_ptr + (token * NUM_HEADS + head) * HEAD_DIM + p, y, mask=p_mask)
    tl.store(state_ptr + state_offsets, state, mask=pn_mask)


_SSM_SCAN = TritonKernel(_ssm_scan)


@torch.library.custom_op("auto_deploy::triton_cached_ssm", mutates_args=("ssm_state",))
def triton_cached_ssm(
    hidden_states: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dt: Tensor,
    dt_bias: Tensor, batch_info_host: Tensor, cu_seqlen: Tensor, input_pos: Tensor,
    slot_idx: Tensor, ssm_state: Tensor, time_step_limit: list[float], chunk_size: int,
) -> Tensor:  # fmt: skip
    num_heads, head_dim = hidden_states.shape[2], hidden_states.shape[3]
    num_groups, state_size = B.shape[2], B.shape[3]
    num_prefill, _, num_decode = split_batch(batch_info_host)
    y = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)
    num_seqs = num_prefill + num_decode
    if num_seqs == 0:
        return y.to(hidden_states.dtype)
    p_block = min(32, next_power_of_2(head_dim))
    grid = (num_seqs, num_heads, triton.cdiv(head_dim, p_block))
    _SSM_SCAN[grid, hidden_states.device](
        hidden_states.contiguous(), dt.contiguous(), A.float().contiguous(), B.contiguous(),
        C.contiguous(), D.contiguous(), dt_bias.contiguous(), cu_seqlen, input_pos, slot_idx,
        ssm_state, y, float(time_step_limit[0]), float(time_step_limit[1]),
        NUM_HEADS=num_heads, HEAD_DIM=head_dim, STATE=state_size, NUM_GROUPS=num_groups,
        P_BLOCK=p_block, N_BLOCK=next_power_of_2(state_size),
    )  # fmt: skip
    return y.to(hidden_states.dtype)


def _causal_conv(
    x_ptr, w_ptr, bias_ptr, cu_seqlen_ptr, input_pos_ptr, slot_ptr, state_ptr, out_ptr,
    CHANNELS: tl.constexpr, KERNEL: tl.constexpr, C_BLOCK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    c = tl.program_id(1) * C_BLOCK + tl.arange(0, C_BLOCK)
    c_mask = c < CHANNELS
    start = tl.load(cu_seqlen_ptr + seq)
    length = tl.load(cu_seqlen_ptr + seq + 1) - start
    continuing = tl.load(input_pos_ptr + seq) > 0
    slot = tl.load(slot_ptr + seq).to(tl.int64)
    history = state_ptr + slot * CHANNELS * (KERNEL - 1) + c * (KERNEL - 1)  # [C_BLOCK] ptrs
    bias = tl.zeros([C_BLOCK], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    for t in range(0, length):
        acc = bias
        for j in tl.static_range(KERNEL):
            src = t - (KERNEL - 1) + j  # < 0: an input before this step, from the state
            x = tl.load(x_ptr + (start + src) * CHANNELS + c, mask=c_mask & (src >= 0), other=0.0)
            old = tl.load(
                history + (KERNEL - 1 + src), mask=c_mask & (src < 0) & continuing, other=0.0
            )
            w = tl.load(w_ptr + c * KERNEL + j, mask=c_mask, other=0.0).to(tl.float32)
            acc += w * (x.to(tl.float32) + old.to(tl.float32))
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc))
        tl.store(out_ptr + (start + t) * CHANNELS + c, acc, mask=c_mask)
    # The new state: the last KERNEL-1 inputs. Position j reads index length + j >= j of the old
    # state, which no earlier iteration has overwritten (length >= 1).
    for j in tl.static_range(KERNEL - 1):
        src = length - (KERNEL - 1) + j
        x = tl.load(x_ptr + (start + src) * CHANNELS + c, mask=c_mask & (src >= 0), other=0.0)
        old = tl.load(history + (KERNEL - 1 + src), mask=c_mask & (src < 0) & continuing, other=0.0)
        tl.store(history + j, x.to(tl.float32) + old.to(tl.float32), mask=c_mask)


_CAUSAL_CONV = TritonKernel(_causal_conv)


@torch.library.custom_op("auto_deploy::triton_cached_causal_conv1d", mutates_args=("conv_state",))
def triton_cached_causal_conv1d(
    x: Tensor, weight: Tensor, bias: Tensor | None, batch_info_host: Tensor, cu_seqlen: Tensor,
    input_pos: Tensor, slot_idx: Tensor, conv_state: Tensor, activation: str | None = None,
) -> Tensor:  # fmt: skip
    if activation not in (None, "silu"):
        raise ValueError(f"causal conv activation {activation!r} is not supported (None, 'silu')")
    channels, kernel_size = x.shape[2], weight.shape[-1]
    num_prefill, _, num_decode = split_batch(batch_info_host)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    num_seqs = num_prefill + num_decode
    if num_seqs == 0:
        return out.to(x.dtype)
    c_block = min(128, next_power_of_2(channels))
    grid = (num_seqs, triton.cdiv(channels, c_block))
    _CAUSAL_CONV[grid, x.device](
        x.contiguous(), weight.contiguous(), bias if bias is not None else weight, cu_seqlen,
        input_pos, slot_idx, conv_state, out, CHANNELS=channels, KERNEL=kernel_size,
        C_BLOCK=c_block, HAS_BIAS=bias is not None, SILU=activation == "silu",
    )  # fmt: skip
    return out.to(x.dtype)


register_convention_fake(triton_cached_ssm, SSM.convention)
register_convention_fake(triton_cached_causal_conv1d, CAUSAL_CONV.convention)


class _TritonState:
    auto_priority = {"cuda": 10}

    @classmethod
    def unavailable(cls, device: torch.device | None) -> str | None:
        return triton_unavailable(device)


@SSMRegistry.register("triton")
class TritonCachedSSM(_TritonState, SSMDescriptor):
    """Triton scan (prefill and decode in one launch); ``auto`` picks it on CUDA."""

    @classmethod
    def get_cached_op(cls) -> Any:
        return torch.ops.auto_deploy.triton_cached_ssm


@CausalConvRegistry.register("triton")
class TritonCachedCausalConv(_TritonState, CausalConvDescriptor):
    """Triton causal conv with the state window and an optional fused SiLU; ``auto`` picks it on
    CUDA."""

    @classmethod
    def get_cached_op(cls) -> Any:
        return torch.ops.auto_deploy.triton_cached_causal_conv1d
