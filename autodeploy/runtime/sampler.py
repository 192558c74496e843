"""Sampler: one token per sequence from the last logits, with per-sequence parameters.

Vectorized over the batch; the only per-sequence host work is one random draw from the
sequence's own generator (so a seeded request gives the same tokens whatever shares its batch).

Per row (temperature, top_k, top_p, u):
  - greedy rows (temperature 0) take the argmax of the raw logits;
  - sampled rows: sort ``logits / temperature`` descending, keep ranks < top_k, then keep the
    smallest prefix whose (top-k renormalized) probability reaches top_p, and pick the kept
    token where the cumulative probability first exceeds ``u * total`` (inverse-CDF sampling
    with the row's uniform draw ``u``). Kept tokens are always a prefix of the sorted order, so
    an excluded token can never be chosen.

A batch of greedy rows only does one ``argmax``. Either way the host sees one small
host-to-device copy of the parameters and one device-to-host copy of the tokens per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .penalties import apply_penalties
from .request import Request

_NUM_PARAMS = 4  # temperature, top_k, top_p, u


class Sampler:
    """Picks the next token of every row of ``logits`` (see the module docstring)."""

    def __init__(self, device: torch.device | str, max_rows: int = 8):
        self.device = torch.device(device)
        self._allocate(max_rows)

    def _allocate(self, rows: int) -> None:
        # Reused every step: pinned host rows -> one non-blocking copy into a device buffer.
        # Reuse is safe because every step ends with the tokens' device-to-host copy, which
        # waits for this copy too.
        pin = self.device.type == "cuda"
        self._host = torch.zeros(rows, _NUM_PARAMS, dtype=torch.float32, pin_memory=pin)
        self._dev = self._host if self.device.type == "cpu" else self._host.to(self.device)

    def sample(self, logits: torch.Tensor, rows: Sequence[Request | None]) -> list[int]:
        """``logits``: [B, vocab]; ``rows[i]``: the request of row i, or None when row i needs
        no token (its value is then greedy and ignored). Returns B token ids.
        Repetition / frequency / presence penalties apply first (``penalties.py``)."""
        logits = apply_penalties(logits, rows)
        sampled = [r for r in rows if r is not None and not r.greedy]
        if not sampled:
            return logits.argmax(dim=-1).tolist()
        # When every sampled row has a top-k, only the top max(k) candidates need sorting.
        top_k = max(r.top_k for r in sampled) if all(r.top_k > 0 for r in sampled) else None
        return sample_rows(logits, self._row_params(rows), top_k).tolist()

    def _row_params(self, rows: Sequence[Request | None]) -> torch.Tensor:
        params: list[float] = []
        for request in rows:
            if request is None or request.greedy:
                params += (0.0, 0.0, 1.0, 0.0)
            else:
                params += (
                    request.temperature,
                    float(request.top_k),
                    request.top_p,
                    request.rng.random(),
                )
        num = len(rows)
        if num > self._host.shape[0]:
            self._allocate(max(num, 2 * self._host.shape[0]))
        host = self._host[:num]
        host.copy_(torch.tensor(params, dtype=torch.float32).view(num, _NUM_PARAMS))
        if self._dev is self._host:
            return host
        device = self._dev[:num]
        device.copy_(host, non_blocking=True)
        return device


def sample_rows(
    logits: torch.Tensor, params: torch.Tensor, max_top_k: int | None = None
) -> torch.Tensor:
    """Vectorized sampling. ``logits`` [B, V]; ``params`` [B, 4] float32 = (temperature,
    top_k (0 = all), top_p, u in [0, 1)). ``max_top_k``: an upper bound of every sampled row's
    top_k (None: some row keeps all tokens), so only that many candidates are sorted.
    Returns [B] int64 token ids."""
    temperature, top_k, top_p, uniform = params.unbind(dim=-1)  # each [B]
    greedy = temperature <= 0.0
    greedy_tokens = logits.argmax(dim=-1)  # [B]

    scaled = logits.float() / torch.where(greedy, 1.0, temperature).unsqueeze(-1)  # [B, V]
    if max_top_k is not None and max_top_k < scaled.shape[-1]:
        sorted_logits, sorted_ids = scaled.topk(max_top_k, dim=-1)  # [B, K], descending
    else:
        sorted_logits, sorted_ids = scaled.sort(dim=-1, descending=True)  # [B, V]
    vocab = sorted_logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device)  # [V]
    k = torch.where(top_k > 0, top_k, float(vocab)).unsqueeze(-1)  # [B, 1]
    sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)  # renormalized over the top-k
    before = probs.cumsum(dim=-1) - probs  # probability of the better-ranked tokens
    keep = (before < top_p.unsqueeze(-1)) & (ranks < k)  # a prefix of the sorted order
    keep[:, 0] = True
    probs = probs * keep
    cdf = probs.cumsum(dim=-1)  # [B, V]
    target = (uniform * cdf[:, -1]).unsqueeze(-1)  # [B, 1]
    position = torch.searchsorted(cdf, target, right=True)  # first rank with cdf > target
    last_kept = keep.sum(dim=-1, keepdim=True) - 1
    position = torch.minimum(position, last_kept)
    sampled = sorted_ids.gather(-1, position).squeeze(-1)  # [B]
    return torch.where(greedy, greedy_tokens, sampled)
