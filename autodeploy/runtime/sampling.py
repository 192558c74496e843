"""SamplingParams: how one request picks its tokens and when it stops.

Every field is checked when the object is made; a bad value raises ``ConfigError`` (a
``ValueError``) naming the field, the value and the allowed range.

Decoding rules, applied in this order to the last logits of a sequence:

- ``temperature == 0`` (or ``top_k == 1``): greedy (argmax); top-k/top-p/seed are ignored.
- otherwise: logits / temperature, keep the ``top_k`` most likely tokens (``0`` / ``None``: all),
  then the smallest set of most likely tokens whose probability adds up to at least ``top_p``
  (``1.0``: all), and draw one of the kept tokens in proportion to its probability.
- ``seed``: the request gets its own random generator, so its tokens do not depend on which
  other requests share the batch. Without a seed the engine's shared generator is used.

Penalties change the logits before all of the above (so greedy decoding sees them too):

- ``repetition_penalty`` (> 0, 1 = off; Hugging Face's rule): every token already in the prompt
  or the output has its logit divided by the penalty when positive, multiplied when negative;
- ``frequency_penalty`` / ``presence_penalty`` (in [-2, 2], 0 = off; OpenAI's rule): a token
  generated ``c`` times so far loses ``c * frequency_penalty + (c > 0) * presence_penalty``
  (output tokens only, not the prompt).

Log-probabilities are those of the model (``log_softmax`` of the raw logits, before penalties
and temperature):

- ``logprobs=n``: for each generated token, ``{token id: logprob}`` of the sampled token and the
  ``n`` most likely ones (``0``: the sampled token only);
- ``prompt_logprobs=n``: the same for every prompt token after the first (the first has
  ``None``), from the logits of the prefill pass itself.

Stopping, checked after every new token (the first that holds wins):

- ``max_tokens`` new tokens were generated -> ``finish_reason == "length"``;
  ``max_tokens=None`` generates until the sequence reaches ``max_seq_len``.
- the token is the model's end-of-sequence token (unless ``ignore_eos``) or in
  ``stop_token_ids`` -> ``"stop"``; the stop token stays in ``token_ids`` but is not detokenized.
- the text now contains one of the ``stop`` strings -> ``"stop"``; the text is cut before the
  stop string (the tokens that produced it stay in ``token_ids``).
- ``min_tokens``: neither EOS nor stop tokens/strings end the request before this many tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..utils.errors import ConfigError

__all__ = ["MAX_LOGPROBS", "SamplingParams"]

MAX_LOGPROBS = 20  # most alternatives per token, as OpenAI's API allows


@dataclass
class SamplingParams:
    """Per-request decoding and stopping settings (see the module docstring)."""

    max_tokens: int | None = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: Sequence[int] = field(default_factory=list)
    stop: str | Sequence[str] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        self.max_tokens = _optional_int("max_tokens", self.max_tokens, minimum=1)
        self.temperature = _number("temperature", self.temperature)
        if self.temperature < 0:
            raise _bad("temperature", self.temperature, "must be >= 0 (0 means greedy)")
        self.top_k = _optional_int("top_k", self.top_k, minimum=0)
        self.top_p = _number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise _bad("top_p", self.top_p, "must be in (0, 1] (1 keeps every token)")
        self.seed = _optional_int("seed", self.seed, minimum=0)
        self.min_tokens = _optional_int("min_tokens", self.min_tokens, minimum=0) or 0
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise _bad("min_tokens", self.min_tokens, f"must be <= max_tokens ({self.max_tokens})")
        if isinstance(self.stop_token_ids, int) and not isinstance(self.stop_token_ids, bool):
            self.stop_token_ids = [self.stop_token_ids]
        ids = list(self.stop_token_ids or [])
        for token in ids:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise _bad("stop_token_ids", self.stop_token_ids, "must be non-negative ints")
        self.stop_token_ids = ids
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if not all(isinstance(s, str) and s for s in stops):
            raise _bad("stop", self.stop, "must be a non-empty string or a list of them")
        self.stop = stops
        for name in ("presence_penalty", "frequency_penalty"):
            value = _number(name, getattr(self, name))
            if not -2.0 <= value <= 2.0:
                raise _bad(name, value, "must be in [-2, 2] (0 turns it off)")
            setattr(self, name, value)
        self.repetition_penalty = _number("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise _bad("repetition_penalty", self.repetition_penalty, "must be > 0 (1 = off)")
        for name in ("logprobs", "prompt_logprobs"):
            count = _optional_int(name, getattr(self, name), minimum=0)
            if count is not None and count > MAX_LOGPROBS:
                raise _bad(name, count, f"must be at most {MAX_LOGPROBS}")
        for name in ("ignore_eos", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, getattr(self, name), "must be true or false")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    @property
    def stop_strings(self) -> list[str]:
        return list(self.stop or [])  # type: ignore[arg-type]


def _bad(name: str, value: object, rule: str) -> ConfigError:
    return ConfigError(f"SamplingParams.{name}={value!r}: {rule}.")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, value, "must be a number")
    if value != value:  # NaN
        raise _bad(name, value, "must not be NaN")
    return float(value)


def _optional_int(name: str, value: object, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, value, "must be an integer" + (" or None" if name != "min_tokens" else ""))
    if value < minimum:
        raise _bad(name, value, f"must be >= {minimum}")
    return value
