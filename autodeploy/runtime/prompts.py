"""Prompt validation in one place: what ``LLM.generate`` / ``LLM.chat`` accept, and the errors.

Accepted prompts: a string; a sequence of token ids (ints, numpy integers, a 1-D tensor or
array); or a list of these (a 2-D tensor or array is a list of prompts). Every rule below is
checked for all prompts before anything runs, and a violation raises ``ConfigError`` naming the
prompt's index in the list (``prompt 2: ...``):

- a prompt must not be empty (no token ids, or a string that tokenizes to nothing);
- token ids are integers in ``0 .. vocab_size - 1``; a string needs a tokenizer;
- ``sampling_params`` is one ``SamplingParams`` for all prompts or exactly one per prompt;
- ``temperature`` is finite; ``top_k`` is at most the vocabulary size; every
  ``stop_token_ids`` entry is inside the vocabulary.

A prompt that is valid but can never fit (prompt + ``max_tokens`` over ``max_seq_len`` or over
the whole KV cache) is not an exception: its output has ``finish_reason == "error"`` and an
``error`` naming the prompt index and both sizes, and the other prompts run.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from typing import Any

from ..utils.errors import ConfigError
from .sampling import SamplingParams

Prompt = str | Sequence[int]


def as_prompt_list(prompts: Any) -> list[Any]:
    """A string, a list of token ids, or a list of either (tensors/arrays too) -> a list."""
    if isinstance(prompts, str):
        return [prompts]
    if hasattr(prompts, "tolist") and not isinstance(prompts, (list, tuple)):
        prompts = prompts.tolist()  # a tensor / array: 1-D is one prompt, 2-D a list of them
        if isinstance(prompts, int):
            raise ConfigError("prompts: a single number is not a prompt; pass a list of ids.")
    if isinstance(prompts, Sequence) and not isinstance(prompts, (bytes, bytearray)):
        items = list(prompts)
        if items and all(_is_token_id(t) for t in items):
            return [items]  # one prompt of token ids
        return items
    raise ConfigError(
        f"prompts must be a string, a list of token ids, or a list of either; got "
        f"{type(prompts).__name__}."
    )


def token_ids_of(
    prompt: Any, index: int, tokenizer: Any | None, vocab_size: int | None, model: str
) -> tuple[str | None, list[int]]:
    """``(text or None, token ids)`` of one prompt, checked (see the module docstring)."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ConfigError(
                f"prompt {index} is a string but {model!r} has no tokenizer; pass token ids or "
                "set `tokenizer`."
            )
        ids = list(tokenizer.encode(prompt))
        check_token_ids(ids, index, vocab_size)
        return prompt, ids
    if hasattr(prompt, "tolist") and not isinstance(prompt, (list, tuple)):
        prompt = prompt.tolist()  # a 1-D tensor or array of ids
    if not isinstance(prompt, Sequence) or isinstance(prompt, (bytes, bytearray)):
        raise ConfigError(
            f"prompt {index} is a {type(prompt).__name__}; a prompt is a string or a list of "
            "token ids."
        )
    if not all(_is_token_id(t) for t in prompt):
        raise ConfigError(f"prompt {index}: token ids must be integers, got {prompt!r:.80}.")
    ids = [operator.index(t) for t in prompt]
    check_token_ids(ids, index, vocab_size)
    return None, ids


def check_token_ids(ids: list[int], index: int, vocab_size: int | None) -> None:
    if not ids:
        raise ConfigError(f"prompt {index} is empty: it needs at least one token.")
    bad = [t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size)]
    if bad:
        raise ConfigError(
            f"prompt {index}: token ids {bad[:5]} are outside the vocabulary "
            f"(0..{(vocab_size or 0) - 1})."
        )


def sampling_params_for(
    num_prompts: int,
    sampling_params: SamplingParams | Sequence[SamplingParams] | None,
    vocab_size: int | None,
) -> list[SamplingParams]:
    """One checked ``SamplingParams`` per prompt."""
    if sampling_params is None:
        params = [SamplingParams()] * num_prompts
    elif isinstance(sampling_params, SamplingParams):
        params = [sampling_params] * num_prompts
    else:
        params = list(sampling_params)
        if len(params) != num_prompts:
            raise ConfigError(
                f"generate(): {len(params)} SamplingParams for {num_prompts} prompts; pass one "
                "for all or exactly one per prompt."
            )
    for index, sp in enumerate(params):
        if not isinstance(sp, SamplingParams):
            raise ConfigError(
                f"sampling_params for prompt {index} is a {type(sp).__name__}, not SamplingParams."
            )
        _check_against_vocab(sp, index, vocab_size)
    return params


def rejection_message(error: Exception, index: int) -> str:
    """The engine's capacity error, naming the prompt index instead of the request id."""
    return re.sub(r"^(the request|request \d+)", f"prompt {index}", str(error))


def _check_against_vocab(sp: SamplingParams, index: int, vocab_size: int | None) -> None:
    where = f"sampling_params for prompt {index}"
    if math.isinf(sp.temperature):
        raise ConfigError(f"{where}: temperature={sp.temperature} must be finite.")
    if vocab_size is None:
        return
    if sp.top_k is not None and sp.top_k > vocab_size:
        raise ConfigError(
            f"{where}: top_k={sp.top_k} is larger than the vocabulary ({vocab_size} tokens); "
            "use 0 or None to keep every token."
        )
    outside = [t for t in sp.stop_token_ids if t >= vocab_size]
    if outside:
        raise ConfigError(
            f"{where}: stop_token_ids {outside[:5]} are outside the vocabulary "
            f"(0..{vocab_size - 1}); such a token can never be generated."
        )


def _is_token_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)  # ints and numpy integers
    except TypeError:
        return False
    return not hasattr(value, "shape") or getattr(value, "shape", ()) == ()
