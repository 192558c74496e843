"""Requests inside the engine, and the outputs handed back to the user.

``Request`` is the engine's mutable record of one sequence: its tokens (prompt then output),
how many of them are already in the KV cache, its sampling parameters and random generator,
and why it finished. ``RequestOutput`` / ``CompletionOutput`` are the immutable results
(the same shape as vLLM / TensorRT-LLM outputs: ``out.outputs[0].token_ids``).
"""

from __future__ import annotations

import enum
import random
import time
from dataclasses import dataclass, field
from typing import Any

from .detokenizer import IncrementalDetokenizer
from .sampling import SamplingParams

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"
FINISH_ERROR = "error"


class RequestState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class CompletionOutput:
    """One generated sequence.

    ``finish_reason``: "stop" (EOS, a stop token or a stop string), "length" (max_tokens or
    max_seq_len), "abort" (``abort_request``), "error" (rejected; ``error`` says why).
    """

    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    error: str | None = None
    # With SamplingParams.logprobs: one {token id: logprob} per generated token.
    logprobs: list[dict[int, float]] | None = None


@dataclass(frozen=True)
class RequestOutput:
    """The result of one prompt: its token ids and the completion(s)."""

    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: dict[str, float] = field(default_factory=dict)
    # With SamplingParams.prompt_logprobs: None for the first prompt token, then one
    # {token id: logprob} per prompt token.
    prompt_logprobs: list[dict[int, float] | None] | None = None

    @property
    def error(self) -> str | None:
        return self.outputs[0].error if self.outputs else None


class Request:
    """The engine's state for one sequence (see the module docstring)."""

    def __init__(
        self,
        request_id: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        max_new_tokens: int,
        *,
        prompt: str | None = None,
        tokenizer: Any | None = None,
        shared_rng: random.Random | None = None,
    ):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_len = len(prompt_token_ids)
        self.token_ids: list[int] = list(prompt_token_ids)  # prompt, then the output
        self.params = params
        self.max_new_tokens = max_new_tokens
        self.num_computed = 0  # tokens whose K/V are in the cache
        self.state = RequestState.WAITING
        self.slot: int | None = None
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.error: str | None = None
        self.arrival_time = time.perf_counter()
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        # Sampling: constants for the vectorized sampler, and the request's random generator.
        self.greedy = params.is_greedy
        self.temperature = 0.0 if self.greedy else params.temperature
        self.top_k = params.top_k or 0
        self.top_p = params.top_p
        if params.seed is not None:
            self.rng = random.Random(params.seed)
        else:
            self.rng = shared_rng or random.Random()
        # Stopping
        self.stop_token_ids = frozenset(params.stop_token_ids)
        self.stop_strings = params.stop_strings
        self._detok = (
            IncrementalDetokenizer(tokenizer, params.skip_special_tokens)
            if self.stop_strings and tokenizer is not None
            else None
        )
        self.stop_text_len: int | None = None  # chars of incremental text before a stop string
        # Log-probabilities, filled by the engine when the params ask for them.
        self.logprobs: list[dict[int, float]] | None = None if params.logprobs is None else []
        self.prompt_logprobs: list[dict[int, float] | None] | None = (
            None if params.prompt_logprobs is None else [None]
        )

    # ------------------------------------------------------------------ queries

    @property
    def max_total_len(self) -> int:
        """Prompt plus the most tokens it may generate: what the cache must hold for it."""
        return self.prompt_len + self.max_new_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < self.prompt_len

    @property
    def finished(self) -> bool:
        return self.state is RequestState.FINISHED

    # ------------------------------------------------------------------ updates

    def append_token(self, token: int, eos_token_ids: frozenset[int]) -> bool:
        """Add a sampled token and apply the stop conditions; True if the request finished."""
        self.token_ids.append(token)
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        num_out = len(self.token_ids) - self.prompt_len
        if num_out >= self.params.min_tokens:
            if token in self.stop_token_ids:
                return self._finish(FINISH_STOP, token)
            if not self.params.ignore_eos and token in eos_token_ids:
                return self._finish(FINISH_STOP, token)
            if self._detok is not None and self._check_stop_strings():
                return True
        if num_out >= self.max_new_tokens:
            return self._finish(FINISH_LENGTH, None)
        return False

    def _check_stop_strings(self) -> bool:
        assert self._detok is not None
        before = len(self._detok.text)
        if not self._detok.update(self.output_token_ids):
            return False
        text = self._detok.text
        longest = max(len(s) for s in self.stop_strings)
        start = max(0, before - longest + 1)  # a stop string may straddle the old text's end
        hits = [(text.find(s, start), s) for s in self.stop_strings]
        hits = [(index, s) for index, s in hits if index >= 0]
        if not hits:
            return False
        index, stop = min(hits)
        self.stop_text_len = index
        return self._finish(FINISH_STOP, stop)

    def _finish(self, reason: str, stop_reason: int | str | None) -> bool:
        self.finish_reason = reason
        self.stop_reason = stop_reason
        self.state = RequestState.FINISHED
        self.finish_time = time.perf_counter()
        return True

    def fail(self, message: str) -> None:
        self.error = message
        self._finish(FINISH_ERROR, None)

    def abort(self) -> None:
        self._finish(FINISH_ABORT, None)

    # ------------------------------------------------------------------ output

    def to_output(self, tokenizer: Any | None) -> RequestOutput:
        token_ids = self.output_token_ids
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.token_ids[: self.prompt_len],
            outputs=[
                CompletionOutput(
                    index=0,
                    token_ids=list(token_ids),
                    text=self._final_text(tokenizer, token_ids),
                    finish_reason=self.finish_reason,
                    stop_reason=self.stop_reason,
                    error=self.error,
                    logprobs=None if self.logprobs is None else list(self.logprobs),
                )
            ],
            finished=self.finished,
            metrics=self._metrics(),
            prompt_logprobs=None if self.prompt_logprobs is None else list(self.prompt_logprobs),
        )

    def visible_token_ids(self) -> list[int]:
        """The output tokens that make up the text: a final stop/EOS token is not part of it."""
        token_ids = self.output_token_ids
        if isinstance(self.stop_reason, int) and token_ids:
            return token_ids[:-1]
        return token_ids

    def _final_text(self, tokenizer: Any | None, token_ids: list[int]) -> str:
        if tokenizer is None or not token_ids:
            return ""
        if isinstance(self.stop_reason, int):  # a stop/EOS token: not part of the text
            token_ids = token_ids[:-1]
        text = tokenizer.decode(token_ids, skip_special_tokens=self.params.skip_special_tokens)
        if isinstance(self.stop_reason, str):
            index = text.find(self.stop_reason)
            if index >= 0:
                return text[:index]
            # The full decode differs from the incremental one (tokenizer quirks): use that.
            assert self._detok is not None and self.stop_text_len is not None
            return self._detok.text[: self.stop_text_len]
        return text

    def _metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.first_token_time is not None:
            metrics["time_to_first_token_s"] = self.first_token_time - self.arrival_time
        if self.finish_time is not None:
            metrics["latency_s"] = self.finish_time - self.arrival_time
        return metrics
