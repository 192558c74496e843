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
from ..utils.progress import ProgressBar

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
    path: Path,
    progress: ProgressBar | None = None,
    slices: dict | None = None,
    rename: Callable[[str], str] | None = None,
    skip: Callable[[str], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Every tensor of one checkpoint file; a truncated or corrupt file is a ``ConfigError``
    naming the file (and the tensor, when one tensor is unreadable). With ``slices`` (a sharded
    model, see ``sliced_loading.py``) safetensors are read as this rank's slices, leaving out
    the tensors ``skip`` names (another rank's experts)."""
    if path.suffix == ".safetensors" and slices:
        from .sliced_loading import read_safetensors_sliced

        try:
            state = read_safetensors_sliced(path, slices, rename, skip)
        except Exception as exc:
            raise _corrupt(path, None, exc) from None
        if progress is not None:
            progress.advance(path.stat().st_size)
        return state
    if path.suffix != ".safetensors":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and torch errors alike
            raise _corrupt(path, None, exc) from None
        if progress is not None:
            progress.advance(path.stat().st_size)
        return state
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # SafetensorError: truncated header, bad offsets, ...
        raise _corrupt(path, None, exc) from None
    state: dict[str, torch.Tensor] = {}
    with handle:
        for key in handle.keys():
            try:
                tensor = handle.get_tensor(key)
            except Exception as exc:
                raise _corrupt(path, key, exc) from None
            state[key] = tensor
            if progress is not None:
                progress.advance(tensor.numel() * tensor.element_size())
    return state


def _corrupt(path: Path, key: str | None, exc: Exception) -> ConfigError:
    tensor = f", tensor {key!r}" if key else ""
    return ConfigError(
        f"Checkpoint file {str(path)!r}{tensor} cannot be read: {type(exc).__name__}: "
        f"{str(exc).strip() or 'no details'}. The file is truncated or corrupt (an interrupted "
        "download or copy?): download or save it again."
    )


def check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Fail on a floating tensor with NaN or Inf (one reduction per tensor; a second only when
    the sum is not finite, since a sum can overflow where no element does)."""
    for key, tensor in state.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if torch.isfinite(tensor.sum(dtype=torch.float32)) or torch.isfinite(tensor).all():
            continue
        nan = int(torch.isnan(tensor).sum())
        inf = int(torch.isinf(tensor).sum())
        raise ConfigError(
            f"Checkpoint tensor {key!r} in {str(path)!r} holds {nan} NaN and {inf} Inf values "
            f"(of {tensor.numel()}): the model would generate garbage. Use an intact checkpoint, "
            "or set `check_weights: false` to load it anyway."
        )


def iter_checkpoint(
    files: list[Path],
    check_weights: bool = True,
    slices: dict | None = None,
    rename: Callable[[str], str] | None = None,
    skip: Callable[[str], bool] | None = None,
) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """Read ``files`` one by one under one progress bar (bytes, ETA) for all of them."""
    total = sum(path.stat().st_size for path in files)
    with ProgressBar(f"loading {len(files)} checkpoint file(s)", total, unit="bytes") as bar:
        for path in files:
            state = read_state_dict(path, bar, slices, rename, skip)
            if check_weights:
                check_finite(path, state)
            yield path, state


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
    model: nn.Module,
    files: list[Path],
    rename: Callable[[str], str] | None = None,
    check_weights: bool = True,
    skip: Callable[[str], bool] | None = None,
) -> None:
    """Load ``files`` into ``model`` (already materialized); every parameter must be covered.

    ``rename`` maps checkpoint keys to the model's names (legacy names in old checkpoints);
    ``check_weights`` rejects tensors with NaN or Inf values; ``skip`` (model names) tensors
    a sharded model has no place for, never read from safetensors (see ``sliced_loading.py``).
    """
    expected = model.state_dict(keep_vars=True)
    # Names that share one tensor (tied embeddings) count as loaded when any alias is loaded.
    aliases: dict[int, set[str]] = {}
    for key, value in expected.items():
        aliases.setdefault(id(value), set()).add(key)
    loaded: set[int] = set()
    unexpected: set[str] = set()
    from .sliced_loading import load_slices_of

    slices = load_slices_of(model)
    for path, shard in iter_checkpoint(files, check_weights, slices, rename, skip):
        logger.debug("loading %s (%d tensors)", path.name, len(shard))
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
