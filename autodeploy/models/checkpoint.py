"""Find and load checkpoint files; random-init what has no checkpoint.

Loading goes through ``module.load_state_dict`` one file at a time, so load-state-dict pre-hooks
(e.g. the ones sharding registers to slice full tensors) fire and no full copy of the model is
held in memory at once. Safetensors come first; ``.bin`` files are read only with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn

from ..utils.errors import ConfigError
from ..utils.logger import logger

# Most preferred first: a sharded index, a single file; safetensors before pickle-based .bin.
_CHECKPOINT_CANDIDATES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def find_checkpoint_files(model_dir: Path) -> list[Path]:
    """The weight files of a Hugging Face style directory, in load order (empty if none)."""
    for name in _CHECKPOINT_CANDIDATES:
        path = model_dir / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            index = json.loads(path.read_text())
            shards = sorted(set(index.get("weight_map", {}).values()))
            missing = [s for s in shards if not (model_dir / s).is_file()]
            if missing:
                raise ConfigError(
                    f"Checkpoint index {str(path)!r} lists shards that are missing: "
                    f"{', '.join(missing)}. Re-download or re-save the checkpoint."
                )
            return [model_dir / s for s in shards]
        return [path]
    return []


def read_state_dict(
    path: Path, slices: dict | None = None, rename: Callable[[str], str] | None = None
) -> dict[str, torch.Tensor]:
    """One file's tensors; with ``slices`` (a sharded model), safetensors are read sliced."""
    if path.suffix == ".safetensors" and slices:
        from .sliced_loading import read_safetensors_sliced

        return read_safetensors_sliced(path, slices, rename)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def iter_checkpoint(
    files: list[Path], slices: dict | None = None, rename: Callable[[str], str] | None = None
) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    for path in files:
        yield path, read_state_dict(path, slices, rename)


def materialize_on_device(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give every meta parameter real (uninitialized) storage; move everything to ``device``.

    Floating parameters take ``dtype``; buffers keep their dtype (RoPE tables stay fp32).
    """
    converted: dict[int, nn.Parameter] = {}  # one new Parameter per shared (tied) tensor
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in converted:
                target_dtype = dtype if param.dtype.is_floating_point else param.dtype
                if param.device.type == "meta":
                    data = torch.empty(param.shape, dtype=target_dtype, device=device)
                else:
                    data = param.data.to(device=device, dtype=target_dtype)
                converted[id(param)] = nn.Parameter(data, requires_grad=False)
            module._parameters[name] = converted[id(param)]
        for name, buf in list(module._buffers.items()):
            if buf is None:
                continue
            if buf.device.type == "meta":
                raise RuntimeError(
                    f"Buffer {name!r} of {type(module).__name__} is still on the meta device; "
                    "buffers must be built with real values (see models/meta_init.py)."
                )
            module._buffers[name] = buf.to(device)


def load_checkpoint(
    model: nn.Module, files: list[Path], rename: Callable[[str], str] | None = None
) -> None:
    """Load ``files`` into ``model`` (already materialized); every parameter must be covered.

    ``rename`` maps checkpoint keys to the model's names (legacy names in old checkpoints).
    """
    expected = model.state_dict(keep_vars=True)
    # Names that share one tensor (tied embeddings) count as loaded when any alias is loaded.
    aliases: dict[int, set[str]] = {}
    for key, value in expected.items():
        aliases.setdefault(id(value), set()).add(key)
    loaded: set[int] = set()
    unexpected: set[str] = set()
    from .sliced_loading import load_slices_of

    for path, shard in iter_checkpoint(files, load_slices_of(model), rename):
        logger.info("loading %s (%d tensors)", path.name, len(shard))
        if rename is not None:
            shard = {rename(key): value for key, value in shard.items()}
        result = model.load_state_dict(shard, strict=False)
        unexpected.update(result.unexpected_keys)
        missing_here = set(result.missing_keys)
        for key in expected:
            if key not in missing_here:
                loaded.add(id(expected[key]))
        del shard
    not_loaded = sorted(min(names) for ident, names in aliases.items() if ident not in loaded)
    if not_loaded:
        shown = ", ".join(not_loaded[:8]) + (" ..." if len(not_loaded) > 8 else "")
        raise ConfigError(
            f"The checkpoint in {str(files[0].parent)!r} has no values for {len(not_loaded)} "
            f"model tensors: {shown}. Check that the checkpoint matches the config (and "
            "`model_kwargs`), or set `skip_loading_weights: true` for random weights."
        )
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:8])
        logger.warning("checkpoint tensors not used by the model: %s", shown)


def random_init(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Deterministic random weights: norms 1, biases 0, everything else N(0, std)."""
    generator = None
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        if generator is None or generator.device != param.device:
            generator = torch.Generator(device=param.device).manual_seed(seed)
        with torch.no_grad():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                param.zero_()
            elif param.ndim == 1 and "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=generator)
