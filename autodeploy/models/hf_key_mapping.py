"""Checkpoint key renames that transformers applies when it loads a checkpoint itself.

Transformers 5 renames legacy checkpoint keys on load (e.g. GPT-NeoX ``embed_out`` ->
``lm_head``). We load checkpoints ourselves, so we apply the same renames. Of the conversions
that reshape tensors, stacking per-expert MoE tensors is applied on load (``moe_checkpoint.py``;
those keys pass through the renamer); a checkpoint that needs any other one is rejected with a
clear error instead of loading wrong values.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch.nn as nn

from ..utils.errors import UnsupportedModelError
from ..utils.logger import logger
from ..utils.unsupported import advice, module_owning
from .moe_checkpoint import ExpertConverter, expert_converter

KeyRenamer = Callable[[str], str]


def hf_key_conversions(model: nn.Module) -> tuple[KeyRenamer | None, list[ExpertConverter]]:
    """The key renamer and the per-expert stacking conversions transformers defines for
    ``model``."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        transforms = get_model_conversion_mapping(model)
    except Exception as exc:  # API differs between transformers versions: load keys as they are
        logger.debug("no transformers key-conversion mapping available: %s", exc)
        return None, []
    renames = [t for t in transforms if isinstance(t, WeightRenaming)]
    all_converters = [t for t in transforms if isinstance(t, WeightConverter)]
    stacking = [(t, expert_converter(t)) for t in all_converters]
    expert_stacking = [ours for _, ours in stacking if ours is not None]
    converters = [t for t, ours in stacking if ours is None]
    converter_patterns = [
        (re.compile(p), t) for t in converters for p in getattr(t, "source_patterns", [])
    ]

    def rename(key: str) -> str:
        """Checkpoint key -> model name; per-expert keys pass through unchanged."""
        if any(stacking.match(key) for stacking in expert_stacking):
            return key  # the expert stacker renames the parameter it writes to (and keeps the
            # checkpoint's key for its error messages)
        for pattern, converter in converter_patterns:
            if pattern.search(key):
                raise unsupported_layout_error(model, key, converter)
        for transform in renames:
            key, _ = transform.rename_source_key(key)
        return key

    return rename, expert_stacking


def unsupported_layout_error(
    model: nn.Module, key: str, converter: object
) -> UnsupportedModelError:
    """The checkpoint stores ``key`` in a layout its module does not use (e.g. one tensor per
    expert where the module holds all experts in one): name the module; re-saving cannot help,
    since the installed transformers writes that same layout."""
    module = module_owning(model, key)
    where = module.describe() if module is not None else "its module"
    sources = getattr(converter, "source_patterns", "?")
    targets = getattr(converter, "target_patterns", "?")
    return UnsupportedModelError(
        f"Checkpoint tensor {key!r} cannot be loaded into {where}: the checkpoint stores it "
        f"as {sources} and the module holds {targets}, and converting between the two "
        f"layouts ({type(converter).__name__}) is not supported yet. {advice(module)}"
    )
