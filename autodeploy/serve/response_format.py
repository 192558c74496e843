"""OpenAI response bodies and stream chunks from our ``RequestOutput`` / ``OutputDelta``.

Completions: ``object: text_completion``, ``choices[i].text`` (the prompt in front with
``echo``), legacy ``logprobs`` (``tokens``, ``token_logprobs``, ``top_logprobs``,
``text_offset``). Chat: ``object: chat.completion`` / ``chat.completion.chunk``,
``choices[i].message`` / ``delta`` (the first chunk of a choice carries the role), ``logprobs.
content``. Finish reasons are ``stop`` or ``length``. ``usage`` counts each prompt once and
every generated token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from ..runtime.deltas import OutputDelta
from ..runtime.request import RequestOutput
from .backend import Encoded, ModelBackend

TokenLogprobs = dict[int, float]


def usage(outputs: Sequence[RequestOutput], n: int) -> dict[str, int]:
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs[::n])
    completion_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ChoiceFormatter:
    """Builds the bodies of one HTTP request (see the module docstring)."""

    def __init__(self, backend: ModelBackend, request: Any, chat: bool, encoded: Sequence[Encoded]):
        self.backend = backend
        self.request = request
        self.chat = chat
        self.encoded = list(encoded)  # per choice
        self.model_id = request.model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.top_n = (request.top_logprobs or 0) if chat else (request.logprobs or 0)
        self.wants_logprobs = bool(request.logprobs) if chat else request.logprobs is not None
        self.echo = bool(getattr(request, "echo", False))
        self._started: set[int] = set()

    # ------------------------------------------------------------------ whole responses

    async def full_response(self, outputs: Sequence[RequestOutput]) -> dict[str, Any]:
        choices = [await self._full_choice(i, o) for i, o in enumerate(outputs)]
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
            "usage": usage(outputs, self.request.n),
        }

    async def _full_choice(self, index: int, output: RequestOutput) -> dict[str, Any]:
        completion = output.outputs[0]
        entries = completion.logprobs or []
        if self.chat:
            return {
                "index": index,
                "message": {"role": "assistant", "content": completion.text},
                "logprobs": await self._chat_logprobs(completion.token_ids, entries),
                "finish_reason": completion.finish_reason,
            }
        text = completion.text
        logprobs = None
        if self.echo:
            text = await self._prompt_text(index) + text
        if self.wants_logprobs:
            logprobs = await self._completion_logprobs(
                completion.token_ids, entries, output if self.echo else None
            )
        return {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": completion.finish_reason,
        }

    # ------------------------------------------------------------------ stream chunks

    async def chunks(self, index: int, delta: OutputDelta) -> list[dict[str, Any]]:
        first = index not in self._started
        self._started.add(index)
        entries = delta.logprobs or []
        finish = delta.finish_reason if delta.finished else None
        if self.chat:
            message: dict[str, Any] = {"role": "assistant"} if first else {}
            if delta.text or first:
                message["content"] = delta.text
            choice = {
                "index": index,
                "delta": message,
                "logprobs": await self._chat_logprobs(delta.token_ids, entries),
                "finish_reason": finish,
            }
            return [self._chunk("chat.completion.chunk", choice)]
        text = delta.text
        if first and self.echo:
            text = await self._prompt_text(index) + text
        logprobs = None
        if self.wants_logprobs:
            logprobs = await self._completion_logprobs(delta.token_ids, entries, None)
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return [self._chunk("text_completion", choice)]

    def usage_chunk(self, outputs: Sequence[RequestOutput]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        chunk = self._chunk(kind, None)
        chunk["usage"] = usage(outputs, self.request.n)
        return chunk

    def _chunk(self, kind: str, choice: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model_id,
            "choices": [] if choice is None else [choice],
        }

    # ------------------------------------------------------------------ pieces

    async def _prompt_text(self, index: int) -> str:
        text, token_ids = self.encoded[index]
        if text is not None:
            return text
        texts = await self.backend.token_texts(token_ids)
        return "".join(texts[t] for t in token_ids)

    def _top(self, entry: TokenLogprobs) -> list[tuple[int, float]]:
        return sorted(entry.items(), key=lambda item: -item[1])[: self.top_n]

    async def _chat_logprobs(
        self, token_ids: Sequence[int], entries: Sequence[TokenLogprobs]
    ) -> dict[str, Any] | None:
        if not self.wants_logprobs:
            return None
        texts = await self.backend.token_texts(_all_ids(token_ids, entries))
        content = []
        for token, entry in zip(token_ids, entries):
            text = texts[token]
            content.append(
                {
                    "token": text,
                    "logprob": entry[token],
                    "bytes": list(text.encode()),
                    "top_logprobs": [
                        {"token": texts[t], "logprob": v, "bytes": list(texts[t].encode())}
                        for t, v in self._top(entry)
                    ],
                }
            )
        return {"content": content}

    async def _completion_logprobs(
        self,
        token_ids: Sequence[int],
        entries: Sequence[TokenLogprobs],
        echoed: RequestOutput | None,
    ) -> dict[str, Any]:
        tokens: list[int] = []
        values: list[float | None] = []
        tops: list[list[tuple[int, float]] | None] = []
        if echoed is not None and echoed.prompt_logprobs is not None:
            for token, entry in zip(echoed.prompt_token_ids, echoed.prompt_logprobs):
                tokens.append(token)
                values.append(None if entry is None else entry[token])
                tops.append(None if entry is None else self._top(entry))
        for token, entry in zip(token_ids, entries):
            tokens.append(token)
            values.append(entry[token])
            tops.append(self._top(entry))
        extra = [t for top in tops if top for t, _ in top]
        texts = await self.backend.token_texts(list(tokens) + extra)
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(texts[token])
        return {
            "tokens": [texts[t] for t in tokens],
            "token_logprobs": values,
            "top_logprobs": [
                None if top is None else {texts[t]: v for t, v in top} for top in tops
            ],
            "text_offset": offsets,
        }


def _all_ids(token_ids: Sequence[int], entries: Sequence[TokenLogprobs]) -> list[int]:
    return list(token_ids) + [t for entry in entries for t in entry]
