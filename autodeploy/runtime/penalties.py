"""Repetition, frequency and presence penalties on a step's last logits.

Rules (see ``sampling.py``): ``repetition_penalty`` (Hugging Face) divides the positive logits
and multiplies the negative logits of every token seen in the prompt or the output;
``frequency_penalty`` / ``presence_penalty`` (OpenAI) subtract ``count * frequency +
(count > 0) * presence`` for tokens of the output. Only rows whose request asks for a penalty
are touched; a batch without penalties costs nothing here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .request import Request


def apply_penalties(logits: torch.Tensor, rows: Sequence[Request | None]) -> torch.Tensor:
    """``logits`` [B, V]; returns a penalized float copy when some row asks for a penalty, else
    ``logits`` itself."""
    penalized = [i for i, r in enumerate(rows) if r is not None and r.params.has_penalties]
    if not penalized:
        return logits
    out = logits.float().clone()
    vocab = out.shape[-1]
    device = out.device
    for row in penalized:
        request = rows[row]
        assert request is not None  # filtered above
        params = request.params
        scores = out[row]  # [V], a view: edits land in `out`
        if params.repetition_penalty != 1.0:
            seen = torch.tensor(request.token_ids, dtype=torch.long, device=device).unique()
            values = scores.index_select(0, seen)
            penalty = params.repetition_penalty
            values = torch.where(values > 0, values / penalty, values * penalty)
            scores.index_copy_(0, seen, values)
        if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
            output = torch.tensor(request.output_token_ids, dtype=torch.long, device=device)
            counts = torch.zeros(vocab, dtype=out.dtype, device=device)
            counts.index_add_(0, output, torch.ones_like(output, dtype=out.dtype))
            scores -= counts * params.frequency_penalty
            scores -= (counts > 0).to(out.dtype) * params.presence_penalty
    return out
