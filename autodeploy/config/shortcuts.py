"""Shortcut fields that stand for one key of one transform's config.

``attn_backend`` is ``transforms.insert_cached_attention.backend``, ``compile_backend`` is
``transforms.compile_model.backend`` and ``cuda_graph_batch_sizes`` is
``transforms.compile_model.cuda_graph_batch_sizes``. Rule (decided here, tested in tests/config):

- the shortcut wins when it was set in a layer at least as high as the layer that set the
  transform key (an explicit ``attn_backend=...`` argument beats any YAML; within one layer the
  shortcut wins); the transform key is then overwritten with the shortcut's value;
- otherwise the shortcut is filled in *from* the transform key (so it always shows the backend
  that will run); a transform entry without the key gives the transform config's default;
- a shortcut that nobody set (or set to null) changes nothing;
- an explicit shortcut whose transform has no entry creates ``{stage: ..., backend: ...}`` if the
  transform is registered, and is an error naming the missing transform otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..utils.errors import ConfigError
from .layers import Provenance


@dataclass(frozen=True)
class ShortcutTarget:
    transform: str
    key: str
    stage: str  # used when the shortcut has to create the transform's entry


TRANSFORM_SHORTCUTS: dict[str, ShortcutTarget] = {
    "attn_backend": ShortcutTarget("insert_cached_attention", "backend", "cache_init"),
    "compile_backend": ShortcutTarget("compile_model", "backend", "compile"),
    "cuda_graph_batch_sizes": ShortcutTarget("compile_model", "cuda_graph_batch_sizes", "compile"),
}


def apply_shortcuts(args: Any, provenance: Provenance) -> list[str]:
    """Sync every shortcut attribute of ``args`` with ``args.transforms`` (both changed in place).

    Returns the shortcuts that still need their value from the transform config's default
    (their transform entry exists but does not set the key); see ``fill_from_defaults``.
    """
    from ..transforms import TransformRegistry

    transforms = args.transforms
    pending = []
    for shortcut, target in TRANSFORM_SHORTCUTS.items():
        value = getattr(args, shortcut)
        short_src = provenance.source((shortcut,)) if value is not None else None
        entry = transforms.get(target.transform)
        key_path = ("transforms", target.transform, target.key)
        has_key = isinstance(entry, dict) and target.key in entry
        key_src = provenance.source(key_path) if has_key else None

        if short_src is not None and provenance.rank(short_src) >= provenance.rank(key_src):
            if entry is None:
                if not TransformRegistry.has(target.transform):
                    raise ConfigError(
                        f"{shortcut}={value!r} (from {short_src}) sets "
                        f"transforms.{target.transform}.{target.key}, but transform "
                        f"{target.transform!r} is not registered, so there is nothing to "
                        f"configure. Load the module or plugin that provides it, or drop "
                        f"{shortcut}."
                    )
                transforms[target.transform] = {"stage": target.stage, target.key: value}
                provenance.set(("transforms", target.transform, "stage"), short_src)
            elif isinstance(entry, dict):
                entry[target.key] = value
            provenance.set(key_path, short_src)
        elif has_key:
            setattr(args, shortcut, entry[target.key])
            provenance.set((shortcut,), key_src or "default")
        elif isinstance(entry, dict):
            pending.append(shortcut)
    return pending


def fill_from_defaults(
    pending: list[str], args: Any, parsed: dict[str, Any], provenance: Provenance
) -> None:
    """Give pending shortcuts the default of their transform's config field."""
    for shortcut in pending:
        target = TRANSFORM_SHORTCUTS[shortcut]
        config = parsed.get(target.transform)
        if config is not None and hasattr(config, target.key):
            setattr(args, shortcut, getattr(config, target.key))
            provenance.set((shortcut,), "default")
