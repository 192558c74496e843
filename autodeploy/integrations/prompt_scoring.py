"""Prompt scoring: the log-probability of every prompt token, from the engine's own passes.

lm-eval's ``loglikelihood`` needs, for a token sequence, ``log p(token_i | tokens_<i)`` at each
position and whether each token is the greedy (argmax) choice. The engine already computes the
logits of every prompt token in its paged prefill passes (chunked, continuously batched with the
other requests); ``PromptScorer`` reads them there, in the same forward pass, before the engine
keeps one row per sequence for sampling. No second model and no second pass.

Requirement: the build returns per-token logits, i.e. ``gather_logits_before_lm_head`` is off
(``SCORING_TRANSFORMS`` does that); a pass that returns one row per sequence while a prompt is
being scored is a ``ConfigError``.

Why a separate module: the engine has no prompt-logprob option (``SamplingParams`` has no
``prompt_logprobs`` on this branch); the scorer wraps two engine members, ``model`` and
``_prepare``, for the duration of a ``with`` block and restores them afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..utils.errors import AutoDeployError, ConfigError

# Settings for an LLM that scores prompts: per-token logits.
SCORING_TRANSFORMS = {"gather_logits_before_lm_head": {"enabled": False}}


@dataclass(frozen=True)
class TokenScore:
    """One prompt token: its log-probability given the tokens before it, and whether it was
    the argmax of those logits."""

    logprob: float
    greedy: bool


@dataclass(frozen=True)
class _Row:
    request_id: int
    start: int  # first position of this step's chunk
    length: int  # tokens of this request in the step
    prompt_len: int
    token_ids: list[int]


class PromptScorer:
    """Collect ``TokenScore``s of every prompt token the engine prefills inside the block."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.scores: dict[int, list[TokenScore]] = {}
        self._rows: list[_Row] = []

    def __enter__(self) -> PromptScorer:
        self._model, self._prepare = self.engine.model, self.engine._prepare
        self.engine.model, self.engine._prepare = self._forward, self._record
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.engine.model, self.engine._prepare = self._model, self._prepare

    def _record(self, batch: Any) -> Any:
        self._rows = [
            _Row(r.request_id, r.num_computed, n, r.prompt_len, r.token_ids)
            for r, n in batch.entries
        ]
        return self._prepare(batch)

    def _forward(self, **named_args: Any) -> Any:
        logits = self._model(**named_args)
        if any(row.start < row.prompt_len - 1 for row in self._rows):
            self._score(logits)
        return logits

    def _score(self, logits: torch.Tensor) -> None:
        flat = logits.reshape(-1, logits.shape[-1])
        needed = sum(row.length for row in self._rows)
        if flat.shape[0] < needed:
            raise ConfigError(
                f"Prompt scoring needs the logits of every token ({needed} in this step), but "
                f"the model returned {flat.shape[0]} rows: build with "
                "transforms.gather_logits_before_lm_head.enabled=false."
            )
        offset = 0
        for row in self._rows:
            # position p predicts token p + 1; only targets inside the prompt are scored
            last = min(row.start + row.length, row.prompt_len - 1)
            count = last - row.start
            if count > 0:
                logprobs = torch.log_softmax(flat[offset : offset + count].float(), dim=-1)
                targets = torch.tensor(
                    row.token_ids[row.start + 1 : last + 1], device=logprobs.device
                )
                chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
                greedy = (logprobs.argmax(dim=-1) == targets).tolist()
                found = self.scores.setdefault(row.request_id, [])
                found += [TokenScore(lp, g) for lp, g in zip(chosen, greedy)]
            offset += row.length


def score_prompts(llm: Any, prompts: Sequence[Sequence[int]]) -> list[list[TokenScore]]:
    """For each prompt (token ids, at least 2), the scores of its tokens 1..n-1.

    All prompts go to the engine together (continuous batching, chunked prefill); each also
    samples one token, which is discarded.
    """
    from ..runtime.sampling import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    with PromptScorer(llm.engine) as scorer:
        outputs = llm.generate([list(p) for p in prompts], params)
    results = []
    for prompt, output in zip(prompts, outputs):
        error = output.outputs[0].error
        if error:
            raise AutoDeployError(f"Scoring a prompt of {len(prompt)} tokens failed: {error}")
        scores = scorer.scores.get(output.request_id, [])
        if len(scores) != len(prompt) - 1:
            raise AutoDeployError(
                f"Scoring a prompt of {len(prompt)} tokens gave {len(scores)} scores instead "
                f"of {len(prompt) - 1}."
            )
        results.append(scores)
    return results
