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

Errors: bad prompts (token ids outside the vocabulary, strings without a tokenizer, a wrong
number of sampling params) raise ``ConfigError`` before anything runs. A request that can never
fit (prompt + max_tokens > max_seq_len, or more than the whole KV cache) does not stop the
others: its output has ``finish_reason == "error"`` and ``outputs[0].error`` says why with both
sizes, and a warning is logged.
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
from .request import RequestOutput
from .sampling import SamplingParams

Prompt = str | Sequence[int]


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
        batch = _as_prompt_list(prompts)
        params = self._params_for(batch, sampling_params)
        encoded = [self._encode(prompt, i) for i, prompt in enumerate(batch)]
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
        params = self._params_for(encoded, sampling_params)
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
            self._check_token_ids(ids, index)
        return encoded

    def _run(
        self, encoded: list[tuple[str | None, list[int]]], params: list[SamplingParams]
    ) -> list[RequestOutput]:
        engine = self.engine
        start = time.perf_counter()
        generated_before = engine.stats.generated_tokens
        logger.info(
            "generating: %d prompts (%d tokens)", len(encoded), sum(len(ids) for _, ids in encoded)
        )
        results = self.driver.generate(encoded, params)
        elapsed = time.perf_counter() - start
        generated = engine.stats.generated_tokens - generated_before
        if generated:
            logger.info(
                "generated %d tokens in %.2f s (%.1f tok/s, %d steps so far)",
                generated,
                elapsed,
                generated / elapsed if elapsed else 0.0,
                engine.stats.steps,
            )
        return results

    def _params_for(
        self, batch: list[Any], sampling_params: SamplingParams | Sequence[SamplingParams] | None
    ) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams()] * len(batch)
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * len(batch)
        params = list(sampling_params)
        if len(params) != len(batch):
            raise ConfigError(
                f"generate(): {len(params)} SamplingParams for {len(batch)} prompts; pass one "
                "for all or exactly one per prompt."
            )
        for index, sp in enumerate(params):
            if not isinstance(sp, SamplingParams):
                raise ConfigError(
                    f"generate(): sampling_params[{index}] is a {type(sp).__name__}, not "
                    "SamplingParams."
                )
        return params

    def _encode(self, prompt: Prompt, index: int) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            tokenizer = self.tokenizer
            if tokenizer is None:
                raise ConfigError(
                    f"prompt {index} is a string but {self.args.model!r} has no tokenizer; "
                    "pass token ids or set `tokenizer`."
                )
            ids = list(tokenizer.encode(prompt))
            self._check_token_ids(ids, index)
            return prompt, ids
        ids = list(prompt)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ConfigError(f"prompt {index}: token ids must be ints, got {prompt!r:.80}.")
        self._check_token_ids(ids, index)
        return None, ids

    def _check_token_ids(self, ids: list[int], index: int) -> None:
        vocab = self.factory.vocab_size
        bad = [t for t in ids if t < 0 or (vocab is not None and t >= vocab)]
        if bad:
            raise ConfigError(
                f"prompt {index}: token ids {bad[:5]} are outside the vocabulary "
                f"(0..{(vocab or 0) - 1})."
            )

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


def _as_prompt_list(prompts: Any) -> list[Prompt]:
    """A string, a list of token ids, or a list of either -> a list of prompts."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and not isinstance(prompts, (bytes, bytearray)):
        items = list(prompts)
        if items and all(isinstance(t, int) and not isinstance(t, bool) for t in items):
            return [items]  # one prompt of token ids
        for index, item in enumerate(items):
            if not isinstance(item, (str, Sequence)) or isinstance(item, (bytes, bytearray)):
                raise ConfigError(
                    f"prompts[{index}] is a {type(item).__name__}; a prompt is a string or a "
                    "list of token ids."
                )
        return items
    if hasattr(prompts, "tolist"):  # a tensor / array of token ids
        return _as_prompt_list(prompts.tolist())
    raise ConfigError(
        f"prompts must be a string, a list of token ids, or a list of either; got "
        f"{type(prompts).__name__}."
    )
