"""AsyncLLM: the asyncio face of an ``LLM`` for servers.

::

    llm = AsyncLLM(model="builtin:tiny-llama", max_seq_len=256)
    async for delta in llm.stream("Hello", SamplingParams(max_tokens=8)):
        print(delta.text, end="")          # delta.token_ids, delta.logprobs, delta.finish_reason
    output = await llm.generate([1, 2, 3], SamplingParams(max_tokens=8))   # a RequestOutput

Requests go to the ``LLM``'s engine driver (one thread steps the engine for every caller);
deltas come back to the caller's event loop. Leaving the ``async for`` early (``break``, task
cancelled, client gone) aborts the request, which frees its pages and slot. ``stream`` refuses
with ``QueueFullError`` when ``max_waiting_requests`` requests already wait, and with
``CapacityError`` when the request can never fit; bad prompts raise ``ConfigError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .deltas import OutputDelta
from .driver import EngineDriver
from .llm import LLM, Prompt
from .request import RequestOutput
from .sampling import SamplingParams


class AsyncLLM:
    """See the module docstring. ``AsyncLLM(model, **settings)`` or ``AsyncLLM.from_llm(llm)``."""

    def __init__(self, model: str | None = None, **settings: Any):
        self.llm = LLM(model, **settings)

    @classmethod
    def from_llm(cls, llm: LLM) -> AsyncLLM:
        instance = cls.__new__(cls)
        instance.llm = llm
        return instance

    @property
    def tokenizer(self) -> Any | None:
        return self.llm.tokenizer

    @property
    def args(self) -> Any:
        return self.llm.args

    @property
    def fatal_error(self) -> str | None:
        """Why the engine stopped accepting requests, or None while it is healthy."""
        driver = self.llm.driver
        if driver.alive:
            return None
        return driver.fatal_error or "the engine driver is not running"

    def stats(self) -> dict[str, float]:
        """Load figures for metrics: running / waiting requests, KV-cache and slot usage."""
        engine = self.llm.engine
        return {
            "running": engine.num_running,
            "waiting": self.llm.driver.num_waiting,
            "kv_cache_usage": engine.kv_cache_usage,
            "slot_usage": engine.slot_usage,
        }

    def encode(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        """A string or token ids -> (text or None, checked token ids); ``ConfigError`` if bad."""
        return self.llm._encode(prompt, 0)

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], **template_kwargs: Any
    ) -> tuple[str | None, list[int]]:
        """(prompt text, token ids) of one conversation through the tokenizer's chat template."""
        return self.llm.encode_chat(list(messages), **template_kwargs)[0]

    def submit(
        self,
        prompt: Prompt | tuple[str | None, list[int]],
        params: SamplingParams | None = None,
        *,
        limit_queue: bool = True,
    ) -> RequestStream:
        """Queue a request now (errors raise here, before anything is streamed) and return the
        async iterator of its deltas. ``prompt``: a string, token ids, or an already encoded
        ``(text, ids)`` pair."""
        if isinstance(prompt, tuple) and len(prompt) == 2 and isinstance(prompt[1], list):
            text, token_ids = prompt
        else:
            text, token_ids = self.encode(prompt)
        stream = RequestStream(self.llm.driver)
        stream.handle = self.llm.driver.submit(
            token_ids, params or SamplingParams(), stream.sink, prompt=text, limit_queue=limit_queue
        )
        return stream

    async def stream(
        self,
        prompt: Prompt | tuple[str | None, list[int]],
        params: SamplingParams | None = None,
        *,
        limit_queue: bool = True,
    ) -> AsyncIterator[OutputDelta]:
        """Yield the request's deltas as the engine makes them (see the module docstring)."""
        stream = self.submit(prompt, params, limit_queue=limit_queue)
        try:
            async for delta in stream:
                yield delta
        finally:
            stream.abort()

    async def generate(
        self, prompt: Prompt, params: SamplingParams | None = None, *, limit_queue: bool = True
    ) -> RequestOutput:
        """The complete result of one prompt."""
        async for delta in self.stream(prompt, params, limit_queue=limit_queue):
            if delta.output is not None:
                return delta.output
        raise RuntimeError("the engine ended the stream without a final output")  # unreachable

    def shutdown(self) -> None:
        self.llm.shutdown()


class RequestStream:
    """The deltas of one submitted request, as an async iterator on the submitting loop.

    ``abort()`` ends the request early (no-op once it finished); breaking out of an ``async
    for`` over ``AsyncLLM.stream`` does it for you.
    """

    def __init__(self, driver: EngineDriver):
        self._driver = driver
        self._loop = asyncio.get_running_loop()
        self._deltas: asyncio.Queue[OutputDelta] = asyncio.Queue()
        self.handle: int | None = None
        self.finished = False

    def sink(self, delta: OutputDelta) -> None:
        """Called on the driver thread: hand the delta to the submitting loop."""
        try:
            self._loop.call_soon_threadsafe(self._deltas.put_nowait, delta)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> OutputDelta:
        if self.finished:
            raise StopAsyncIteration
        delta = await self._deltas.get()
        self.finished = delta.finished
        return delta

    def abort(self) -> None:
        if not self.finished and self.handle is not None:
            self.finished = True
            self._driver.abort(self.handle)
