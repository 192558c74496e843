"""Checks of where a build's files come from, run when the settings resolve (before any build).

- ``tokenizer``: a bad path or an id that is not in the local cache is reported at once, not
  after the whole build;
- ``trust_remote_code: true``: a warning names where the setting came from and the checkpoint
  code that will run (the ``auto_map`` entries of the model's config.json).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.errors import ConfigError
from ..utils.logger import logger

# Files one of which every Hugging Face tokenizer directory holds.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def check_tokenizer_source(value: str | None, where: str) -> None:
    """Raise ``ConfigError`` unless ``value`` is a tokenizer directory, a built-in model or a
    hub id in the local cache. ``where`` is the setting and its source, for the message."""
    if value is None:
        return
    from ..models.sources import BUILTIN_PREFIX, _from_hub_cache, resolve_model_dir

    if value.startswith(BUILTIN_PREFIX):
        resolve_model_dir(value)  # unknown built-in names are errors with suggestions there
        return
    path = Path(value).expanduser()
    if path.is_dir():
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ConfigError(
                f"{where}: directory {value!r} holds no tokenizer (none of "
                f"{', '.join(TOKENIZER_FILES)}). Point it at a directory written by "
                "`tokenizer.save_pretrained`, or leave it unset to use the model's tokenizer."
            )
        return
    looks_like_path = path.suffix or value.startswith((".", "/", "~")) or value.count("/") > 1
    if path.exists() or looks_like_path:
        found = "is a file, not a directory" if path.exists() else "does not exist"
        raise ConfigError(
            f"{where}: tokenizer path {value!r} {found} (looked for {str(path.resolve())!r}). "
            "Pass a tokenizer directory or a hub id in the local cache."
        )
    try:
        _from_hub_cache(value)
    except ConfigError:
        raise ConfigError(
            f"{where}: {value!r} is neither a local directory nor in the local Hugging Face "
            f"cache, and autodeploy does not download: run `huggingface-cli download {value}` "
            "first, or pass a tokenizer directory."
        ) from None


def warn_remote_code(model: str, where: str) -> None:
    """Warn that the checkpoint's own Python code will run, naming its modules if known."""
    modules = _auto_map_modules(model)
    if modules is None:
        code = "any Python code the checkpoint ships"
    elif modules:
        code = f"the checkpoint's code {', '.join(modules)}"
    else:
        code = "no checkpoint code (its config.json names none in auto_map)"
    logger.warning(
        "trust_remote_code is on%s: building %r will import and run %s. Only do this for "
        "checkpoints you trust.",
        where,
        model,
        code,
    )


def _auto_map_modules(model: str) -> list[str] | None:
    """The ``auto_map`` entries of a local model's config.json (None: config.json not found)."""
    config = Path(model).expanduser() / "config.json"
    try:
        auto_map = json.loads(config.read_text()).get("auto_map") or {}
    except (OSError, ValueError, AttributeError):
        return None
    refs = [
        ref
        for value in auto_map.values()
        for ref in (value if isinstance(value, list) else [value])
    ]
    return sorted({str(ref) for ref in refs if ref})
