"""The Mamba-2 state-space math in plain torch, shared by the reference ops.

Notation (shapes per sequence batch): ``x`` [b, s, H, P] (H heads of P = head_dim channels),
``dt`` [b, s, H], ``A`` [H] (negative), ``B``/``C`` [b, s, G, N] (G groups of N = state size;
head h reads group h // (H / G)), state [b, H, P, N].

The recurrence, per head and step t (what every function below computes):

    decay_t = exp(dt_t * A)
    state_t = decay_t * state_{t-1} + dt_t * x_t (outer) B_t          [P, N]
    y_t     = state_t @ C_t + D * x_t                                 [P]

``chunked_scan`` evaluates it chunk by chunk (quadratic inside a chunk, the recurrence between
chunks), which is how the prefill kernels work; ``recurrent_step`` is one step (decode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def discretize_dt(dt: Tensor, dt_bias: Tensor, time_step_limit: list[float]) -> Tensor:
    """``clamp(softplus(dt + dt_bias), *time_step_limit)`` in float32: the step size per head."""
    step = F.softplus(dt.float() + dt_bias.float())
    return torch.clamp(step, min=time_step_limit[0], max=time_step_limit[1])


def expand_groups(bc: Tensor, num_heads: int) -> Tensor:
    """[..., G, N] -> [..., H, N]: every head gets the B or C of its group."""
    return bc.float().repeat_interleave(num_heads // bc.shape[-2], dim=-2)


def chunked_scan(
    x: Tensor,  # [b, s, H, P]
    step: Tensor,  # [b, s, H] discretized dt (float32)
    A: Tensor,  # [H]
    B: Tensor,  # [b, s, G, N]
    C: Tensor,  # [b, s, G, N]
    chunk_size: int,
    initial_state: Tensor | None = None,  # [b, H, P, N]
) -> tuple[Tensor, Tensor]:
    """The scan without the ``D`` skip term: (y [b, s, H, P] float32, final state [b, H, P, N])."""
    batch, seq_len, num_heads, head_dim = x.shape
    B, C = expand_groups(B, num_heads), expand_groups(C, num_heads)  # [b, s, H, N]
    pad = (-seq_len) % chunk_size  # padded steps have dt = 0: no decay, no input
    x, step, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x.float(), step, B, C))
    chunks = (seq_len + pad) // chunk_size

    def by_chunk(t: Tensor) -> Tensor:  # [b, s, ...] -> [b, chunks, L, ...]
        return t.reshape(batch, chunks, chunk_size, *t.shape[2:])

    x, step, B, C = by_chunk(x), by_chunk(step), by_chunk(B), by_chunk(C)
    log_decay = torch.cumsum(step * A.float(), dim=2)  # [b, c, L, H]: sum of dt*A up to l
    inputs = x * step[..., None]  # dt * x: [b, c, L, H, P]

    # Inside a chunk: y_l = sum_{k <= l} (C_l . B_k) exp(log_decay_l - log_decay_k) dt_k x_k
    gap = log_decay[:, :, :, None, :] - log_decay[:, :, None, :, :]  # [b, c, l, k, H]
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    weights = torch.exp(gap.masked_fill(~causal[None, None, :, :, None], float("-inf")))
    scores = torch.einsum("bclhn,bckhn->bclkh", C, B) * weights
    y = torch.einsum("bclkh,bckhp->bclhp", scores, inputs)

    # What each chunk adds to the state at its end:
    #   sum_k exp(log_decay_L - log_decay_k) dt_k x_k (outer) B_k
    to_end = torch.exp(log_decay[:, :, -1:, :] - log_decay)  # [b, c, L, H]
    chunk_states = torch.einsum("bclh,bclhp,bclhn->bchpn", to_end, inputs, B)
    chunk_decay = torch.exp(log_decay[:, :, -1, :])  # [b, c, H]: decay over the whole chunk

    state = x.new_zeros(batch, num_heads, head_dim, B.shape[-1])
    if initial_state is not None:
        state = initial_state.float().clone()
    starts = []
    for c in range(chunks):  # the recurrence between chunks
        starts.append(state)
        state = chunk_decay[:, c, :, None, None] * state + chunk_states[:, c]
    start_states = torch.stack(starts, dim=1)  # [b, c, H, P, N]: the state entering each chunk

    # The state entering the chunk, decayed to position l and read out with C_l.
    from_start = torch.exp(log_decay)  # [b, c, L, H]
    y = y + torch.einsum("bclhn,bchpn,bclh->bclhp", C, start_states, from_start)
    y = y.reshape(batch, chunks * chunk_size, num_heads, head_dim)[:, :seq_len]
    return y, state


def recurrent_step(
    state: Tensor,  # [b, H, P, N] float32
    x: Tensor,  # [b, H, P]
    step: Tensor,  # [b, H] discretized dt
    A: Tensor,  # [H]
    B: Tensor,  # [b, G, N]
    C: Tensor,  # [b, G, N]
) -> tuple[Tensor, Tensor]:
    """One step of the recurrence without ``D``: (y [b, H, P] float32, new state)."""
    num_heads = x.shape[1]
    B, C = expand_groups(B, num_heads), expand_groups(C, num_heads)  # [b, H, N]
    decay = torch.exp(step * A.float())[..., None, None]  # [b, H, 1, 1]
    update = (step[..., None] * x.float())[..., None] * B[:, :, None, :]  # [b, H, P, N]
    state = decay * state.float() + update
    y = (state * C[:, :, None, :]).sum(-1)  # state @ C per head (elementwise: no GEMM setup)
    return y, state


def skip(x: Tensor, D: Tensor) -> Tensor:
    """The ``D * x`` skip term: x [..., H, P], D [H]."""
    return x.float() * D.float()[:, None]
