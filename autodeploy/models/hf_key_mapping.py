"""Checkpoint key renames that transformers applies when it loads a checkpoint itself.

Transformers 5 renames legacy checkpoint keys on load (e.g. GPT-NeoX ``embed_out`` ->
``lm_head``). We load checkpoints ourselves, so we apply the same renames. Conversions that
reshape tensors (e.g. merging per-expert MoE weights) are not renames: a checkpoint that needs
one is rejected with a clear error instead of loading wrong values.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch.nn as nn

from ..utils.errors import ConfigError
from ..utils.logger import logger

KeyRenamer = Callable[[str], str]


def hf_key_renamer(model: nn.Module) -> KeyRenamer | None:
    """A function mapping checkpoint keys to the model's names, or None if nothing to rename."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        transforms = get_model_conversion_mapping(model)
    except Exception as exc:  # API differs between transformers versions: load keys as they are
        logger.debug("no transformers key-conversion mapping available: %s", exc)
        return None
    renames = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    converter_patterns = [
        (re.compile(p), t) for t in converters for p in getattr(t, "source_patterns", [])
    ]

    def rename(key: str) -> str:
        for pattern, converter in converter_patterns:
            if pattern.search(key):
                raise ConfigError(
                    f"Checkpoint tensor {key!r} needs a layout conversion "
                    f"({type(converter).__name__} {converter.source_patterns} -> "
                    f"{converter.target_patterns}) that autodeploy does not apply yet. "
                    "Re-save the checkpoint with the installed transformers version."
                )
        for transform in renames:
            key, _ = transform.rename_source_key(key)
        return key

    return rename
