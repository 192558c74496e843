"""Cached Mamba-2 ops: the scan and the causal conv over a packed batch with per-slot state.

The batch follows the packed-batch contract: prefill sequences first (their tokens are rows
``cu_seqlen[i] .. cu_seqlen[i+1]-1`` of the flattened ``[1, total_tokens, ...]`` input), then
``num_decode`` sequences of one token each. Sequence i owns state slot ``slot_idx[i]``.

- prefill: start from the slot's state when ``input_pos[i] > 0`` (a chunked-prefill
  continuation), from zeros otherwise; run the sequence; write the final state to the slot.
- decode: one recurrent step per sequence from its slot's state, vectorized over the decode rows
  (device tensors only, so a decode-only step can be captured in a CUDA graph; padding rows use
  the spare slot).

``ssm_state``: [slots, H, P, N] (its dtype is ``kv_cache_config.mamba_ssm_cache_dtype``; the
math runs in float32). ``conv_state``: [slots, channels, kernel_size - 1], the last inputs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cached_op import register_convention_fake
from .descriptor import CAUSAL_CONV, SSM
from .ssm_math import chunked_scan, discretize_dt, recurrent_step, skip
from .torch_backend import apply_conv_activation


def split_batch(batch_info_host: Tensor) -> tuple[int, int, int]:
    """(num_prefill sequences, num_prefill tokens, num_decode sequences) of the step."""
    num_prefill, num_prefill_tokens, num_decode = (int(v) for v in batch_info_host.tolist())
    return num_prefill, num_prefill_tokens, num_decode


def prefill_sequences(
    num_prefill: int, cu_seqlen: Tensor, input_pos: Tensor, slot_idx: Tensor
) -> Iterator[tuple[slice, int, bool]]:
    """(token rows, state slot, continues a chunked prefill) of each prefill sequence."""
    if not num_prefill:
        return
    starts = cu_seqlen[: num_prefill + 1].tolist()
    continues = (input_pos[:num_prefill] > 0).tolist()
    slots = slot_idx[:num_prefill].tolist()
    for i in range(num_prefill):
        yield slice(starts[i], starts[i + 1]), slots[i], continues[i]


@torch.library.custom_op("auto_deploy::torch_cached_ssm", mutates_args=("ssm_state",))
def torch_cached_ssm(
    hidden_states: Tensor,  # [b, s, H, P]; b * s = total tokens
    A: Tensor,  # [H]
    B: Tensor,  # [b, s, G, N]
    C: Tensor,  # [b, s, G, N]
    D: Tensor,  # [H]
    dt: Tensor,  # [b, s, H]
    dt_bias: Tensor,  # [H]
    batch_info_host: Tensor,  # CPU [3]
    cu_seqlen: Tensor,  # [B + 1]
    input_pos: Tensor,  # [B]
    slot_idx: Tensor,  # [B] int64
    ssm_state: Tensor,  # [slots, H, P, N]
    time_step_limit: list[float],
    chunk_size: int,
) -> Tensor:
    num_heads, head_dim = hidden_states.shape[2], hidden_states.shape[3]
    x = hidden_states.reshape(-1, num_heads, head_dim)  # [T, H, P]
    B_tokens, C_tokens = B.reshape(-1, *B.shape[2:]), C.reshape(-1, *C.shape[2:])  # [T, G, N]
    step = discretize_dt(dt.reshape(-1, num_heads), dt_bias, time_step_limit)  # [T, H]
    y = torch.zeros_like(x, dtype=torch.float32)
    num_prefill, num_prefill_tokens, num_decode = split_batch(batch_info_host)

    for rows, slot, continues in prefill_sequences(num_prefill, cu_seqlen, input_pos, slot_idx):
        initial = ssm_state[slot][None] if continues else None
        y_seq, final = chunked_scan(
            x[None, rows], step[None, rows], A, B_tokens[None, rows], C_tokens[None, rows],
            chunk_size, initial,
        )  # fmt: skip
        y[rows] = y_seq[0]
        ssm_state[slot] = final[0].to(ssm_state.dtype)

    if num_decode:
        rows = slice(num_prefill_tokens, num_prefill_tokens + num_decode)
        slots = slot_idx[num_prefill : num_prefill + num_decode]
        y[rows], new_state = recurrent_step(
            ssm_state[slots], x[rows], step[rows], A, B_tokens[rows], C_tokens[rows]
        )
        ssm_state[slots] = new_state.to(ssm_state.dtype)
    return (y + skip(x, D)).to(hidden_states.dtype).view(hidden_states.shape)


@torch.library.custom_op("auto_deploy::torch_cached_causal_conv1d", mutates_args=("conv_state",))
def torch_cached_causal_conv1d(
    x: Tensor,  # [b, s, channels]; b * s = total tokens
    weight: Tensor,  # [channels, 1, kernel_size]
    bias: Tensor | None,  # [channels]
    batch_info_host: Tensor,
    cu_seqlen: Tensor,
    input_pos: Tensor,
    slot_idx: Tensor,
    conv_state: Tensor,  # [slots, channels, kernel_size - 1]
    activation: str | None = None,
) -> Tensor:
    channels, kernel_size = x.shape[2], weight.shape[-1]
    tokens = x.reshape(-1, channels)  # [T, channels]
    out = torch.zeros_like(tokens)
    num_prefill, num_prefill_tokens, num_decode = split_batch(batch_info_host)

    def convolve(history: Tensor, new: Tensor) -> tuple[Tensor, Tensor]:
        """history [n, channels, K-1] + new inputs [n, channels, s] -> (outputs [n, s, channels],
        the last K-1 inputs = the next history)."""
        window = torch.cat([history.to(weight.dtype), new.to(weight.dtype)], dim=-1)
        y = F.conv1d(window, weight, bias, groups=channels)  # no padding: one output per new input
        y = apply_conv_activation(y, activation)
        return y.transpose(1, 2).to(x.dtype), window[..., window.shape[-1] - (kernel_size - 1) :]

    for rows, slot, continues in prefill_sequences(num_prefill, cu_seqlen, input_pos, slot_idx):
        history = conv_state[slot][None]
        if not continues:  # a new sequence: nothing before its first token
            history = torch.zeros_like(history)
        y, last = convolve(history, tokens[rows].t()[None])
        out[rows] = y[0]
        conv_state[slot] = last[0].to(conv_state.dtype)

    if num_decode:  # one new input each: a dot product over the window, no conv setup
        rows = slice(num_prefill_tokens, num_prefill_tokens + num_decode)
        slots = slot_idx[num_prefill : num_prefill + num_decode]
        new = tokens[rows, :, None].to(weight.dtype)
        window = torch.cat([conv_state[slots].to(weight.dtype), new], dim=-1)
        y = (window * weight[:, 0]).sum(-1)  # [n, channels]
        y = apply_conv_activation(y if bias is None else y + bias, activation)
        out[rows] = y.to(x.dtype)
        conv_state[slots] = window[..., 1:].to(conv_state.dtype)
    return out.view(x.shape)


register_convention_fake(torch_cached_ssm, SSM.convention)
register_convention_fake(torch_cached_causal_conv1d, CAUSAL_CONV.convention)
