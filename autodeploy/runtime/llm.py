"""LLM: the user-facing generation API.

::

    from autodeploy import LLM, SamplingParams

    with LLM(model="builtin:tiny-llama", max_seq_len=256, attn_backend="torch") as llm:
        outs = llm.generate(["Hello", [1, 2, 3]], SamplingParams(max_tokens=32, temperature=0))
        print(outs[0].outputs[0].text, outs[1].outputs[0].token_ids)
        reply = llm.chat([{"role": "user", "content": "Hi!"}])[0].outputs[0].text

``LLM(model=..., **settings)`` takes every ``LlmArgs`` setting as a keyword (they are the
highest configuration layer, over default.yaml, ``yaml_extra`` files and ``AUTODEPLOY_*``
variables); ``LLM.from_args(args)`` takes an already resolved ``LlmArgs``. The model is built
once, in the constructor.

``generate(prompts, sampling_params)``: ``prompts`` is a string, a list of token ids, or a list
of either; ``sampling_params`` one ``SamplingParams`` for all, or a list (one per prompt).
Strings are tokenized with the model's tokenizer (special tokens such as BOS added as the
tokenizer does by default). Returns one ``RequestOutput`` per prompt, in order, always a list.
All prompts run together with continuous batching (at most ``max_batch_size`` at a time).

Chat prompts: ``chat(messages, sampling_params)`` applies the tokenizer's chat template
(``add_generation_prompt=True``) to one conversation (a list of ``{"role", "content"}`` dicts) or
to a list of conversations.

Errors: the prompt rules are in ``prompts.py`` (one place): a bad prompt or sampling setting
(empty prompt, token ids outside the vocabulary, a string without a tokenizer, a wrong number of
sampling params, infinite temperature, top_k or stop_token_ids beyond the vocabulary) raises
``ConfigError`` naming the prompt index, before anything runs. A request that can never fit
(prompt + max_tokens > max_seq_len, or more than the whole KV cache) does not stop the others:
its output has ``finish_reason == "error"`` and ``outputs[0].error`` says why with the prompt
index and both sizes, and a warning is logged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from ..config.model_registry import apply_registry_environment
from ..config.settings import LlmArgs
from ..utils.errors import ConfigError
from ..utils.logger import logger
from .builder import BuildResult, build_from_args, check_supported
from .driver import EngineDriver
from .engine import Engine
from .prompts import (
    Prompt,
    as_prompt_list,
    check_token_ids,
    sampling_params_for,
    token_ids_of,
)
from .request import RequestOutput
from .sampling import SamplingParams


class LLM:
    """Build a model once, then generate with it (see the module docstring)."""

    def __init__(self, model: str | None = None, **settings: Any):
        if model is not None:
            settings["model"] = model
        self._init(LlmArgs(**settings))

    @classmethod
    def from_args(cls, args: LlmArgs) -> LLM:
        """An LLM from an already resolved configuration (e.g. from the command line)."""
        llm = cls.__new__(cls)
        llm._init(args)
        return llm

    def _init(self, args: LlmArgs) -> None:
        self._engine: Engine | None = None
        self._driver: EngineDriver | None = None
        self._driver_lock = threading.Lock()
        check_supported(args)
        self.args = args
        # Registry device settings (env variables not set yet) must be in place before the build.
        apply_registry_environment(args)
        self._build: BuildResult | None = build_from_args(args)
        cm = self._build.cm
        self._engine = Engine(
            self._build.model,
            cm,
            num_pages=cm.num_pages,
            page_size=cm.page_size,
            max_batch_size=args.max_batch_size,
            max_num_tokens=cm.info.max_num_tokens,
            max_seq_len=args.max_seq_len,
            device=cm.device,
            tokenizer=self._build.tokenizer,
            eos_token_ids=self._build.eos_token_ids,
        )

    # ------------------------------------------------------------------ properties

    @property
    def tokenizer(self) -> Any | None:
        return self._built().tokenizer

    @property
    def model(self) -> Any:
        """The optimized module (called as ``model(**cm.named_args)``)."""
        return self._built().model

    @property
    def cm(self) -> Any:
        """The ``CachedSequenceInterface`` (packed batch and caches)."""
        return self._built().cm

    @property
    def factory(self) -> Any:
        return self._built().factory

    @property
    def engine(self) -> Engine:
        self._built()
        assert self._engine is not None
        return self._engine

    @property
    def driver(self) -> EngineDriver:
        """The thread that owns the engine (started on first use); every request goes through
        it, so ``generate`` may be called from several threads at once."""
        with self._driver_lock:
            if self._driver is None:
                self._driver = EngineDriver(
                    self.engine, max_waiting_requests=self.args.max_waiting_requests
                )
            return self._driver

    @property
    def build_time_s(self) -> float:
        return self._built().build_time_s

    def _built(self) -> BuildResult:
        if self._build is None:
            raise RuntimeError("This LLM was shut down; make a new one to generate again.")
        return self._build

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (see the module docstring); outputs in prompt order."""
        batch = as_prompt_list(prompts)
        vocab = self.factory.vocab_size
        params = sampling_params_for(len(batch), sampling_params, vocab)
        encoded = [
            token_ids_of(prompt, i, self.tokenizer, vocab, self.args.model)
            for i, prompt in enumerate(batch)
        ]
        return self._run(encoded, params)

    def chat(
        self,
        messages: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        **template_kwargs: Any,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, through the chat template.

        ``template_kwargs`` go to ``tokenizer.apply_chat_template`` (e.g. ``tools=...``).
        """
        encoded = self.encode_chat(messages, **template_kwargs)
        params = sampling_params_for(len(encoded), sampling_params, self.factory.vocab_size)
        return self._run(encoded, params)

    def encode_chat(
        self,
        messages: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]],
        **template_kwargs: Any,
    ) -> list[tuple[str | None, list[int]]]:
        """(prompt text, token ids) of one conversation or each of a list of them."""
        tokenizer = self.tokenizer
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"chat(): the tokenizer of {self.args.model!r} has no chat template. Use "
                "generate() with plain prompts, or set `tokenizer` to one that has a template."
            )
        if messages and isinstance(messages[0], dict):
            conversations = [messages]
        else:
            conversations = list(messages)  # type: ignore[arg-type]
        texts = []
        for index, conversation in enumerate(conversations):
            if not all(isinstance(m, dict) and "role" in m for m in conversation):
                raise ConfigError(
                    f"chat(): conversation {index} must be a list of {{'role': ..., "
                    "'content': ...}} dicts."
                )
            texts.append(
                tokenizer.apply_chat_template(
                    list(conversation),
                    tokenize=False,
                    add_generation_prompt=True,
                    **template_kwargs,
                )
            )
        encoded: list[tuple[str | None, list[int]]] = [
            (text, tokenizer.encode(text, add_special_tokens=False)) for text in texts
        ]  # the template already holds the special tokens it wants
        for index, (_, ids) in enumerate(encoded):
            check_token_ids(ids, index, self.factory.vocab_size)
        return encoded

    def _encode(self, prompt: Prompt, index: int) -> tuple[str | None, list[int]]:
        """(text or None, checked token ids) of one prompt (rules: ``prompts.py``)."""
        return token_ids_of(prompt, index, self.tokenizer, self.factory.vocab_size, self.args.model)

    def _run(
        self, encoded: list[tuple[str | None, list[int]]], params: list[SamplingParams]
    ) -> list[RequestOutput]:
        engine = self.engine
        start = time.perf_counter()
        generated_before = engine.stats.generated_tokens
        logger.info(
            "generating for %d prompts (%d prompt tokens)",
            len(encoded),
            sum(len(ids) for _, ids in encoded),
        )
        results = self.driver.generate(encoded, params)
        elapsed = time.perf_counter() - start
        generated = engine.stats.generated_tokens - generated_before
        if generated:
            logger.info(
                "generated %d new tokens in %.2f s (%.1f tok/s, %d steps so far)",
                generated,
                elapsed,
                generated / elapsed if elapsed else 0.0,
                engine.stats.steps,
            )
        return results

    # ------------------------------------------------------------------ lifetime

    def shutdown(self) -> None:
        """Abort what is running and release the model and its caches (idempotent)."""
        if self._driver is not None:
            self._driver.shutdown()
            self._driver = None
        if self._engine is not None:
            self._engine.shutdown()
        self._engine = None
        self._build = None
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "shut down" if self._build is None else f"device={self.cm.device}"
        return f"LLM(model={self.args.model!r}, {state})"
