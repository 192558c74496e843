"""From resolved settings to a runnable model: factory, sequence interface, optimized graph,
tokenizer.

``build_from_args(args)`` is what ``LLM`` and the tools call:

1. the model factory named by ``args.model_factory`` (``AutoModelForCausalLM``);
2. a ``CachedSequenceInterface`` sized by ``max_seq_len`` / ``max_batch_size`` /
   ``max_num_tokens`` / ``kv_cache_config`` on the resolved device;
3. ``InferenceOptimizer(factory, args.transforms, strict=args.strict)(cm)``: the whole pipeline,
   which exports the model, loads the weights, inserts the cached attention and allocates (and
   on GPU sizes) the paged KV cache;
4. the tokenizer (``factory.init_tokenizer()``; None if the model has none) and the
   end-of-sequence ids (model config, generation config, tokenizer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..config.settings import LlmArgs
from ..models.factory import create_factory
from ..utils.errors import BuildError, ConfigError
from ..utils.logger import logger


@dataclass
class BuildResult:
    """Everything a runtime needs from a build."""

    args: LlmArgs
    factory: Any  # ModelFactory
    cm: Any  # CachedSequenceInterface
    model: nn.Module
    tokenizer: Any | None
    eos_token_ids: list[int] = field(default_factory=list)
    build_time_s: float = 0.0


def check_supported(args: LlmArgs) -> None:
    """Settings the configuration accepts but this machine cannot run: a ConfigError before
    anything is built (e.g. more ranks than GPUs)."""
    if args.world_size > 1:
        import os

        from ..distributed.process_group import check_devices, launched_by_torchrun

        on_this_node = args.world_size
        if launched_by_torchrun():
            on_this_node = int(os.environ.get("LOCAL_WORLD_SIZE", args.world_size))
        source = args.provenance().get("world_size", "")
        try:
            check_devices(args.world_size, args.resolved_device(), on_this_node)
        except ConfigError as exc:
            if "registry" not in source:
                raise
            raise ConfigError(
                f"{exc} (world_size comes from {source}; a keyword world_size=N or "
                "--args.world_size N overrides it)"
            ) from None


def make_sequence_interface(args: LlmArgs, device: str) -> Any:
    from ..shim import CachedSequenceInterface

    return CachedSequenceInterface(
        max_seq_len=args.max_seq_len,
        max_batch_size=args.max_batch_size,
        max_num_tokens=args.max_num_tokens,
        device=device,
        kv_cache_config=args.kv_cache_config,
    )


def build_from_args(args: LlmArgs, rank: int = 0, local_rank: int | None = None) -> BuildResult:
    """Run the whole build for ``args`` (see the module docstring) as ``rank`` of
    ``args.world_size`` ranks (the sharding transforms keep this rank's part of the model)."""
    from ..transforms import InferenceOptimizer
    from ..transforms.interface import SharedConfig

    check_supported(args)
    start = time.perf_counter()
    device = args.resolved_device()
    factory = create_factory(args)
    cm = make_sequence_interface(args, device)
    logger.info("building %s on %s (%d transforms)", args.model, device, len(args.transforms))
    # ``rank`` is the global rank (what sharding keeps); the device index is the local rank.
    shared = SharedConfig(
        local_rank=local_rank if local_rank is not None else rank,
        rank=rank,
        world_size=args.world_size,
        strict=args.strict,
    )
    optimizer = InferenceOptimizer(
        factory,
        args.transforms,
        strict=args.strict,
        shared_config=shared,
        resolved_config=args.to_dict(),
    )
    model = optimizer(cm)
    report_upstream_keys(args)
    if cm.num_pages is None:
        raise BuildError(
            "The build finished without allocating the KV cache (cm.num_pages is unset): the "
            "cache_init transforms (insert_cached_attention, initialize_cache) are disabled or "
            "missing from `transforms`. Enable them to generate text."
        )
    built = time.perf_counter()
    logger.info("model built in %.1f s", built - start)
    tokenizer = factory.init_tokenizer()
    eos = eos_token_ids(factory, tokenizer)
    logger.info(
        "tokenizer: %s; end-of-sequence ids: %s",
        type(tokenizer).__name__ if tokenizer is not None else "none (prompts must be token ids)",
        eos or "none",
    )
    return BuildResult(
        args=args,
        factory=factory,
        cm=cm,
        model=model,
        tokenizer=tokenizer,
        eos_token_ids=eos,
        build_time_s=time.perf_counter() - start,
    )


def report_upstream_keys(args: LlmArgs) -> None:
    """Upstream (TensorRT-LLM) keys of the configuration, once, with the build summary."""
    for note in args.upstream_notes():
        if note.used:
            logger.info("build summary: %s", note.describe())
        else:
            logger.warning("build summary: %s", note.describe())


def eos_token_ids(factory: Any, tokenizer: Any | None) -> list[int]:
    """The union of the EOS ids in the model config, generation_config.json and tokenizer."""
    found: list[int] = []

    def add(value: Any) -> None:
        values = value if isinstance(value, (list, tuple, set)) else [value]
        for item in values:
            if isinstance(item, int) and not isinstance(item, bool) and item not in found:
                found.append(item)

    add(getattr(factory.model_config, "eos_token_id", None))
    model_dir = getattr(factory, "model_dir", None)
    if model_dir is not None and (Path(model_dir) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        try:
            add(GenerationConfig.from_pretrained(str(model_dir)).eos_token_id)
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable generation_config.json: %s", exc)
    if tokenizer is not None:
        add(getattr(tokenizer, "eos_token_id", None))
    return found
