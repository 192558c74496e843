"""Recognize a checkpoint by its Hugging Face config: architecture patterns of registry entries.

Rules:

- ``model_type`` must be equal; every other pattern key must exist on the config and be equal
  (``True`` does not equal ``1``; tuples compare as lists); a mapping value (``text_config``)
  matches the nested config key by key; attributes the pattern does not name are ignored;
- the most specific matching entry wins (the count of pinned values, see
  ``ArchitecturePattern.specificity``);
- ties: an entry whose config_id is the requested one (``'default'`` when none was requested)
  before the others, then the order of ``models.yaml``;
- with a requested config_id, only entries with that config_id take part.

The config of a local directory (or ``builtin:`` model, or hub id in the local cache) is read
with ``AutoConfig.from_pretrained`` (never remote code, never the network); when transformers
does not know the model type, the raw ``config.json`` is matched instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...utils.errors import ConfigError
from ...utils.logger import logger
from .schema import DEFAULT_CONFIG_ID, ArchitecturePattern, RegistryEntry

_MISSING = object()


@dataclass(frozen=True)
class ArchitectureMatch:
    """The winning entry, how specific its pattern is, and the entries it tied with."""

    entry: RegistryEntry
    specificity: int
    tied_with: tuple[RegistryEntry, ...] = ()


def read_hf_config(model: str) -> tuple[Any, Path]:
    """The Hugging Face config of ``model`` (a PretrainedConfig, or the raw config.json dict).

    Raises ``ConfigError`` when the model's directory cannot be found offline.
    """
    from ...models.sources import resolve_model_dir  # lazy: imports torch and transformers

    model_dir = resolve_model_dir(model)
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_dir, trust_remote_code=False), model_dir
    except (ValueError, KeyError, OSError) as exc:
        logger.debug("AutoConfig cannot read %s (%s); matching the raw config.json", model_dir, exc)
    try:
        raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read {model_dir / 'config.json'}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{model_dir / 'config.json'}: the top level is not a JSON object.")
    return raw, model_dir


def model_type_of(hf_config: Any) -> str | None:
    value = _attribute(hf_config, "model_type")
    return None if value is _MISSING else value


def pattern_matches(pattern: ArchitecturePattern, hf_config: Any) -> bool:
    """True when every value the pattern pins equals the config's (see the module docstring)."""
    if not _equal(_attribute(hf_config, "model_type"), pattern.model_type):
        return False
    for key, expected in pattern.attributes.items():
        actual = _attribute(hf_config, key)
        if isinstance(expected, dict):
            if actual is _MISSING or actual is None:
                return False
            if not all(_equal(_attribute(actual, k), v) for k, v in expected.items()):
                return False
        elif not _equal(actual, expected):
            return False
    return True


def match_architecture(
    hf_config: Any, entries: Iterable[RegistryEntry], config_id: str | None = None
) -> ArchitectureMatch | None:
    """The entry whose pattern matches ``hf_config`` most specifically (None if none does)."""
    preferred = DEFAULT_CONFIG_ID if config_id is None else config_id
    candidates = [
        entry
        for entry in entries
        if entry.architecture is not None
        and (config_id is None or entry.config_id == config_id)
        and pattern_matches(entry.architecture, hf_config)
    ]
    if not candidates:
        return None

    candidates.sort(key=lambda e: (-_specificity(e), e.config_id != preferred, e.index))
    best = candidates[0]
    tied = tuple(e for e in candidates[1:] if _specificity(e) == _specificity(best))
    return ArchitectureMatch(best, _specificity(best), tied)


def _specificity(entry: RegistryEntry) -> int:
    return entry.architecture.specificity if entry.architecture is not None else 0


def _attribute(config: Any, key: str) -> Any:
    if isinstance(config, dict):
        return config.get(key, _MISSING)
    return getattr(config, key, _MISSING)


def _equal(actual: Any, expected: Any) -> bool:
    if actual is _MISSING:
        return False
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if isinstance(expected, list):
        return isinstance(actual, (list, tuple)) and [*actual] == expected
    if isinstance(expected, (int, float)):
        return isinstance(actual, (int, float)) and actual == expected
    return actual == expected
