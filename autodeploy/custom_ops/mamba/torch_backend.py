"""Reference Mamba-2 ops (uncached). The code below *is* the specification of their semantics.

``torch_ssm``: the selective state-space scan of a Mamba-2 mixer over whole sequences from a zero
state (see ``ssm_math`` for the recurrence). ``torch_causal_conv1d``: the depthwise causal
convolution in front of it. Both take ``[batch, seq, ...]`` inputs (channels last).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ssm_math import chunked_scan, discretize_dt, skip

CONV_ACTIVATIONS = (None, "silu")


@torch.library.custom_op("auto_deploy::torch_ssm", mutates_args=())
def torch_ssm(
    hidden_states: Tensor,  # [b, s, H, P]
    A: Tensor,  # [H], negative (the mixer's -exp(A_log))
    B: Tensor,  # [b, s, G, N]
    C: Tensor,  # [b, s, G, N]
    D: Tensor,  # [H]
    dt: Tensor,  # [b, s, H], before the bias and softplus
    dt_bias: Tensor,  # [H]
    time_step_limit: list[float],  # [min, max] clamp of softplus(dt + dt_bias)
    chunk_size: int,
) -> Tensor:
    """y [b, s, H, P] (hidden_states' dtype) of the Mamba-2 scan from a zero state."""
    step = discretize_dt(dt, dt_bias, time_step_limit)  # [b, s, H]
    y, _final_state = chunked_scan(hidden_states, step, A, B, C, chunk_size)
    return (y + skip(hidden_states, D)).to(hidden_states.dtype)


@torch_ssm.register_fake
def _torch_ssm_fake(hidden_states, A, B, C, D, dt, dt_bias, time_step_limit, chunk_size):
    return torch.empty_like(hidden_states)


def apply_conv_activation(y: Tensor, activation: str | None) -> Tensor:
    if activation is None:
        return y
    if activation == "silu":
        return F.silu(y)
    raise ValueError(
        f"causal conv activation {activation!r} is not supported; use one of {CONV_ACTIVATIONS}."
    )


@torch.library.custom_op("auto_deploy::torch_causal_conv1d", mutates_args=())
def torch_causal_conv1d(
    x: Tensor,  # [b, s, channels]
    weight: Tensor,  # [channels, 1, kernel_size] (nn.Conv1d with groups = channels)
    bias: Tensor | None,  # [channels]
    activation: str | None = None,  # None or "silu"
) -> Tensor:
    """out[:, t] = bias + sum_j weight[:, 0, j] * x[:, t - (kernel_size - 1) + j] (zeros before
    the start), then the activation; [b, s, channels] in x's dtype."""
    seq_len, channels, kernel_size = x.shape[1], x.shape[2], weight.shape[-1]
    channels_first = x.transpose(1, 2).to(weight.dtype)  # [b, channels, s]
    y = F.conv1d(channels_first, weight, bias, padding=kernel_size - 1, groups=channels)
    y = apply_conv_activation(y[..., :seq_len], activation)  # drop the look-ahead outputs
    return y.transpose(1, 2).to(x.dtype)


@torch_causal_conv1d.register_fake
def _torch_causal_conv1d_fake(x, weight, bias, activation=None):
    return torch.empty_like(x)
