"""What the HTTP routes need of one served model, and its in-process implementation.

``ModelBackend`` (a protocol): ``model_id``; ``sampling_defaults`` (SamplingParams fields a
model file sets, e.g. llm-serve ``generate_kwargs``); ``encode(prompt=... | messages=...)`` ->
``(text, token ids)``; ``open(encoded, params)`` -> a ``DeltaStream`` (queued at once, so
capacity / queue errors raise here); ``token_texts(ids)``; ``health()`` (None when healthy,
else why not); ``stats()`` (load gauges). ``LocalBackend`` runs an ``AsyncLLM`` in this
process; the Ray Serve app has a backend that forwards the same calls to a replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from ..runtime.async_llm import AsyncLLM
from ..runtime.deltas import OutputDelta
from ..runtime.sampling import SamplingParams
from ..utils.errors import ConfigError
from .prompt_format import PromptFormat

Encoded = tuple[str | None, list[int]]


class DeltaStream(Protocol):
    def __aiter__(self) -> AsyncIterator[OutputDelta]: ...
    def abort(self) -> None: ...


class ModelBackend(Protocol):
    model_id: str
    sampling_defaults: dict[str, Any]

    async def encode(
        self, prompt: str | list[int] | None = None, messages: Sequence[dict] | None = None
    ) -> Encoded: ...
    async def open(self, encoded: Encoded, params: SamplingParams) -> DeltaStream: ...
    async def token_texts(self, token_ids: Sequence[int]) -> dict[int, str]: ...
    async def health(self) -> str | None: ...
    async def stats(self) -> dict[str, float]: ...


def check_input_words(
    max_input_words: int | None, prompt: Any, messages: Sequence[dict] | None
) -> None:
    """A ConfigError (a 400) when the prompt or the messages hold more words than allowed."""
    if max_input_words is None:
        return
    texts = [str(m.get("content") or "") for m in messages or []]
    if isinstance(prompt, str):
        texts.append(prompt)
    words = sum(len(text.split()) for text in texts)
    if words > max_input_words:
        field = "messages" if messages is not None else "prompt"
        raise ConfigError(
            f"{field}: {words} words, more than this model's max_input_words="
            f"{max_input_words}. Shorten the prompt."
        )


class LocalBackend:
    """A ``ModelBackend`` over an in-process ``AsyncLLM``."""

    def __init__(
        self,
        llm: AsyncLLM,
        model_id: str,
        *,
        sampling_defaults: dict[str, Any] | None = None,
        prompt_format: PromptFormat | None = None,
        max_input_words: int | None = None,
    ):
        self.llm = llm
        self.model_id = model_id
        self.sampling_defaults = dict(sampling_defaults or {})
        self.prompt_format = prompt_format
        self.max_input_words = max_input_words

    async def encode(
        self, prompt: str | list[int] | None = None, messages: Sequence[dict] | None = None
    ) -> Encoded:
        check_input_words(self.max_input_words, prompt, messages)
        if messages is not None:
            if self.prompt_format is not None:
                return self.llm.encode(self.prompt_format.render_chat(messages))
            return self.llm.encode_chat(messages)
        if prompt is None:
            raise ConfigError("prompt: missing; give a string or a list of token ids.")
        if isinstance(prompt, str) and self.prompt_format is not None:
            prompt = self.prompt_format.render_instruction(prompt)
        return self.llm.encode(prompt)

    async def open(self, encoded: Encoded, params: SamplingParams) -> DeltaStream:
        return self.llm.submit(encoded, params)

    async def token_texts(self, token_ids: Sequence[int]) -> dict[int, str]:
        tokenizer = self.llm.tokenizer
        if tokenizer is None:
            return {int(t): "" for t in token_ids}
        return {int(t): tokenizer.decode([int(t)]) for t in set(token_ids)}

    async def health(self) -> str | None:
        return self.llm.fatal_error

    async def stats(self) -> dict[str, float]:
        return self.llm.stats()

    def shutdown(self) -> None:
        self.llm.shutdown()
