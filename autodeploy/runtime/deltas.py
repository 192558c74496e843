"""Per-step output deltas: what a streaming caller receives after each engine step.

``OutputDelta`` carries the tokens a request gained in one step, the text they add, their
log-probabilities (when asked), and, on the last delta, the finish reason and the complete
``RequestOutput``. ``DeltaTracker`` turns a request's growing state into deltas whose texts
concatenate to exactly the final ``outputs[0].text``:

- text comes from an incremental detokenizer (no O(length) decode per step);
- while stop strings may still match, the last ``len(longest stop) - 1`` characters are held
  back (they could be the start of a stop string, which is cut from the text);
- the last delta adds whatever the final text has beyond what was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .detokenizer import IncrementalDetokenizer
from .request import Request, RequestOutput


@dataclass(frozen=True)
class OutputDelta:
    """What one request gained in one step (see the module docstring)."""

    request_id: int  # the id the caller got from submit()
    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    error: str | None = None
    logprobs: list[dict[int, float]] | None = None  # one entry per token of this delta
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0  # so far, this delta included
    output: RequestOutput | None = None  # the complete result, on the last delta only


class DeltaTracker:
    """Remembers what was sent for one request; ``next_delta()`` makes the next one."""

    def __init__(self, handle: int, request: Request, tokenizer: Any | None):
        self.handle = handle
        self.request = request
        self.tokenizer = tokenizer
        self.sent_tokens = 0
        self.sent_text = ""
        params = request.params
        self._detok = (
            IncrementalDetokenizer(tokenizer, params.skip_special_tokens) if tokenizer else None
        )
        stops = params.stop_strings
        self._holdback = max(len(s) for s in stops) - 1 if stops else 0

    def next_delta(self, output: RequestOutput | None = None) -> OutputDelta | None:
        """The delta since the last call; None when the request gained nothing. ``output``:
        the finished request's output if the engine already made it."""
        request = self.request
        num_tokens = request.num_output_tokens
        if num_tokens == self.sent_tokens and not request.finished:
            return None
        new_tokens = request.output_token_ids[self.sent_tokens :]
        logprobs = None
        if request.logprobs is not None:
            logprobs = request.logprobs[self.sent_tokens : num_tokens]
        self.sent_tokens = num_tokens
        if output is None and request.finished:
            output = request.to_output(self.tokenizer)
        if output is not None:
            final_text = output.outputs[0].text
            text = final_text[len(self.sent_text) :]
        else:
            text = self._running_text()
        self.sent_text += text
        return OutputDelta(
            request_id=self.handle,
            token_ids=new_tokens,
            text=text,
            finished=output is not None,
            finish_reason=request.finish_reason,
            stop_reason=request.stop_reason,
            error=request.error,
            logprobs=logprobs,
            num_prompt_tokens=request.prompt_len,
            num_output_tokens=num_tokens,
            output=output,
        )

    def _running_text(self) -> str:
        if self._detok is None:
            return ""
        self._detok.update(self.request.output_token_ids)
        text = self._detok.text
        safe = len(text) - self._holdback if self._holdback else len(text)
        return text[len(self.sent_text) : max(safe, len(self.sent_text))]


def rejected_delta(handle: int, output: RequestOutput) -> OutputDelta:
    """The only delta of a request the engine refused (finish_reason "error")."""
    completion = output.outputs[0]
    return OutputDelta(
        request_id=handle,
        token_ids=[],
        text="",
        finished=True,
        finish_reason=completion.finish_reason,
        error=completion.error,
        num_prompt_tokens=len(output.prompt_token_ids),
        output=output,
    )
