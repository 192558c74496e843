"""Prompt scoring: the log-probability of every prompt token, from the engine's own passes.

lm-eval's ``loglikelihood`` needs, for a token sequence, ``log p(token_i | tokens_<i)`` at each
position and whether each token is the greedy (argmax) choice. The engine gives exactly that
with ``SamplingParams(prompt_logprobs=1)``: for every prompt token after the first, a
``{token id: logprob}`` entry holding that token and the most likely one, computed from the
logits of the paged prefill pass itself (chunked and continuously batched with the other
requests; see ``autodeploy/runtime/logprobs.py``). No second model and no second pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..utils.errors import AutoDeployError


@dataclass(frozen=True)
class TokenScore:
    """One prompt token: its log-probability given the tokens before it, and whether it was
    the argmax of those logits."""

    logprob: float
    greedy: bool


def token_scores(
    prompt: Sequence[int], entries: Sequence[dict[int, float] | None]
) -> list[TokenScore]:
    """``TokenScore`` of prompt tokens 1..n-1 from the engine's ``prompt_logprobs`` entries
    (entry 0, for the first token, is None)."""
    scores = []
    for token, entry in zip(prompt[1:], entries[1:]):
        if entry is None or token not in entry:
            raise AutoDeployError(f"prompt_logprobs has no entry for prompt token {token}.")
        logprob = entry[token]
        scores.append(TokenScore(logprob, logprob >= max(entry.values())))
    return scores


def score_prompts(llm: Any, prompts: Sequence[Sequence[int]]) -> list[list[TokenScore]]:
    """For each prompt (token ids, at least 2), the scores of its tokens 1..n-1.

    All prompts go to the engine together (continuous batching, chunked prefill); each also
    samples one token, which is discarded.
    """
    from ..runtime.sampling import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, prompt_logprobs=1)
    outputs = llm.generate([list(p) for p in prompts], params)
    results = []
    for prompt, output in zip(prompts, outputs):
        error = output.outputs[0].error
        if error:
            raise AutoDeployError(f"Scoring a prompt of {len(prompt)} tokens failed: {error}")
        entries = output.prompt_logprobs or []
        if len(entries) != len(prompt):
            raise AutoDeployError(
                f"Scoring a prompt of {len(prompt)} tokens gave {len(entries)} prompt_logprobs "
                "entries."
            )
        results.append(token_scores(prompt, entries))
    return results
