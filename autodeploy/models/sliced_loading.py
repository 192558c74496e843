"""Read only this rank's slice of each sharded tensor from safetensors files.

Sharding records, per parameter, the dimension and indices a rank keeps (``gm.meta
["load_slices"]``, see ``transforms/library/sharding/_slicing.py``). Reading a safetensors file
through ``safe_open(...).get_slice`` then loads just those rows/columns, tensor by tensor, so a
rank never holds the full tensor of a sharded weight: its peak is its share of the file plus the
largest contiguous block it reads. The load hooks see tensors that are already local and pass
them through. Other files (``.bin``) are read whole and sliced by the hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

LoadSlices = dict[str, tuple[int, list[int], tuple[int, ...]]]
LOAD_SLICES_KEY = "load_slices"


def load_slices_of(model: torch.nn.Module) -> LoadSlices:
    """The slices registered on ``model`` (empty when nothing is sharded)."""
    meta = getattr(model, "meta", None)
    return dict(meta.get(LOAD_SLICES_KEY, {})) if isinstance(meta, dict) else {}


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs [start, end) of ``indices`` (in order)."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


def read_safetensors_sliced(
    path: Path,
    slices: LoadSlices,
    rename: Callable[[str], str] | None = None,
    skip: Callable[[str], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of ``path``; those named in ``slices`` (model names) read as their slice,
    those ``skip`` names (per-expert tensors of another rank's experts) not at all."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for key in handle.keys():
            name = rename(key) if rename is not None else key
            if skip is not None and skip(name):
                continue
            wanted = slices.get(name)
            if wanted is None:
                found[key] = handle.get_tensor(key)
                continue
            dim, indices, full_shape = wanted
            lazy = handle.get_slice(key)
            if tuple(lazy.get_shape()) != tuple(full_shape):
                found[key] = handle.get_tensor(key)  # not what sharding expects: hooks decide
                continue
            pieces = []
            for start, end in _runs(indices):
                index = [slice(None)] * len(full_shape)
                index[dim] = slice(start, end)
                pieces.append(lazy[tuple(index)])
            found[key] = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)
    return found
