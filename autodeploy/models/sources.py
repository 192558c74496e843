"""Where a model comes from: ``builtin:<name>``, a local directory, or a hub id in the local cache.

Nothing is downloaded: autodeploy runs offline. A hub id must already be in the Hugging Face
cache (``huggingface-cli download <id>`` puts it there).
"""

from __future__ import annotations

from pathlib import Path

from ..utils.errors import ConfigError
from ..utils.suggest import did_you_mean

BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).parent / "builtin"


def builtin_names() -> list[str]:
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model_dir(model: str) -> Path:
    """Return the local directory holding ``config.json`` (and weights/tokenizer if any)."""
    if model.startswith(BUILTIN_PREFIX):
        name = model[len(BUILTIN_PREFIX) :]
        path = BUILTIN_DIR / name
        if not (path / "config.json").is_file():
            choices = [BUILTIN_PREFIX + n for n in builtin_names()]
            raise ConfigError(
                f"Unknown built-in model {model!r}.{did_you_mean(model, choices)} "
                f"Built-in models: {', '.join(choices)}."
            )
        return path
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"Model directory {str(path)!r} has no config.json. Point `model` at a Hugging "
                "Face style directory (config.json + *.safetensors), e.g. one written by "
                "`save_pretrained`."
            )
        return path
    if path.suffix or model.startswith((".", "/", "~")):
        raise ConfigError(f"Model path {model!r} does not exist (looked for {str(path)!r}).")
    return _from_hub_cache(model)


def _from_hub_cache(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - transformers depends on huggingface_hub
        raise ConfigError(f"Cannot resolve hub id {repo_id!r}: huggingface_hub missing.") from exc
    try:
        return Path(
            snapshot_download(repo_id, local_files_only=True, allow_patterns=["*.json", "*.txt"])
        )
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError) as exc:
        raise ConfigError(
            f"Model {repo_id!r} is neither a local directory nor in the local Hugging Face cache. "
            f"autodeploy does not download models: run `huggingface-cli download {repo_id}` "
            f"first, or pass a local directory. Built-in models: "
            f"{', '.join(BUILTIN_PREFIX + n for n in builtin_names())}."
        ) from exc
