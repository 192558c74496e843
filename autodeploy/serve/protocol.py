"""Request bodies of the OpenAI routes and their mapping onto ``SamplingParams``.

Unknown fields are errors (400 naming the field), as are out-of-range values (checked by
``SamplingParams``). ``n`` asks for several completions per prompt (separate requests; with a
``seed``, completion i uses ``seed + i``). ``logprobs`` in /v1/completions is the number of
alternatives per token; in /v1/chat/completions it is a flag and ``top_logprobs`` the number.
``echo`` (completions) puts the prompt in front of the text (and its log-probabilities in front
of the token log-probabilities when ``logprobs`` is set).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..runtime.sampling import MAX_LOGPROBS, SamplingParams

MAX_N = 16


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = True


class _Common(BaseModel):
    """Fields shared by both routes."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = Field(default=None, ge=0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def sampling_params(
        self,
        index: int,
        defaults: dict[str, Any],
        logprobs: int | None,
        prompt_logprobs: int | None,
    ) -> SamplingParams:
        """The SamplingParams of completion ``index``; ``defaults`` (from a model file) fill the
        fields the request did not set."""
        given = self.model_fields_set
        values: dict[str, Any] = dict(defaults)
        for name in (
            "temperature",
            "top_p",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "min_tokens",
            "ignore_eos",
            "skip_special_tokens",
            "stop",
            "stop_token_ids",
        ):
            if name in given or name not in values:
                values[name] = getattr(self, name)
        if "top_k" in given or "top_k" not in values:
            values["top_k"] = None if self.top_k in (None, -1, 0) else self.top_k
        max_tokens = self.requested_max_tokens()
        if max_tokens is not None or "max_tokens" not in values:
            values["max_tokens"] = max_tokens if max_tokens is not None else 16
        if values.get("stop_token_ids") is None:
            values["stop_token_ids"] = []
        if values.get("seed") is not None:
            values["seed"] = values["seed"] + index
        values["logprobs"] = logprobs
        values["prompt_logprobs"] = prompt_logprobs
        return SamplingParams(**values)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def include_usage_in_stream(self) -> bool:
        return self.stream_options is None or self.stream_options.include_usage


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: None = None  # accepted only when empty: insertion is not supported

    def prompts(self) -> list[str | list[int]]:
        """One prompt or a batch of them."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ... go to the template

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def as_template_message(self) -> dict[str, Any]:
        message = self.model_dump(exclude_none=True)
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            message["content"] = "".join(
                part.get("text", "") for part in content if part.get("type") == "text"
            )
        return message


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
