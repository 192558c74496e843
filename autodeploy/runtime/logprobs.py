"""Log-probabilities for generated tokens (``logprobs``) and prompt tokens (``prompt_logprobs``).

Both are ``log_softmax`` of the model's raw logits (before penalties and temperature). One
token's entry is ``{token id: logprob}`` holding the chosen token and the ``n`` most likely ones
(so it has ``n`` or ``n + 1`` items). Only rows that ask for them are computed, and their
results come to the host in one copy per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

TokenLogprobs = dict[int, float]


def logprob_entries(
    logits: torch.Tensor, chosen: Sequence[int], top_n: int | Sequence[int]
) -> list[TokenLogprobs]:
    """``logits`` [R, V], the chosen token of each row, and how many alternatives each row
    wants (one number for all, or one per row) -> one entry per row."""
    num_rows = logits.shape[0]
    if num_rows == 0:
        return []
    wanted = [top_n] * num_rows if isinstance(top_n, int) else list(top_n)
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [R, V]
    chosen_ids = torch.tensor(list(chosen), dtype=torch.long, device=logits.device)
    chosen_values = log_probs.gather(-1, chosen_ids.unsqueeze(-1)).squeeze(-1).tolist()  # [R]
    most = max(wanted)
    top_ids: list[list[int]] = [[] for _ in range(num_rows)]
    top_values: list[list[float]] = [[] for _ in range(num_rows)]
    if most:
        values, ids = log_probs.topk(most, dim=-1)  # [R, most]
        top_ids, top_values = ids.tolist(), values.tolist()
    entries: list[TokenLogprobs] = []
    for row, token in enumerate(chosen):
        count = wanted[row]
        entry: TokenLogprobs = dict(zip(top_ids[row][:count], top_values[row][:count]))
        entry[int(token)] = chosen_values[row]
        entries.append(entry)
    return entries


def prompt_logprob_entries(
    token_logits: torch.Tensor, token_ids: Sequence[int], start: int, top_n: int
) -> list[TokenLogprobs]:
    """Entries for the prompt tokens that the logits of positions ``start .. start + n - 1``
    predict: ``token_logits`` [n, V] (one row per new token of a prefill chunk), ``token_ids``
    the whole prompt. Row j predicts prompt token ``start + j + 1``; rows past the prompt's end
    predict nothing."""
    count = min(token_logits.shape[0], len(token_ids) - 1 - start)
    if count <= 0:
        return []
    targets = token_ids[start + 1 : start + 1 + count]
    return logprob_entries(token_logits[:count], targets, top_n)
