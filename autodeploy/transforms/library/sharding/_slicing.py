"""Split parameters to this rank's part, and keep checkpoints loading into them.

Sharding runs before weights load (the model is still on the meta device), so a split only
replaces the parameter by one of the local shape and registers a ``load_state_dict`` pre-hook
(the mechanism ``fuse_gemms`` uses) that slices a full-size checkpoint tensor on its way in.
The slices are also listed in ``gm.meta[LOAD_SLICES_KEY]`` so the checkpoint reader can read
just those rows/columns from safetensors files and never hold a full sharded tensor.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.fx import GraphModule

from ....models.sliced_loading import LOAD_SLICES_KEY


class SliceOnLoad:
    """Pre-hook: a full-size ``key`` in the state dict is replaced by this rank's slice.

    An already-local tensor (a state dict of the sharded model, or one the checkpoint reader
    sliced) passes through. Picklable, so sharded modules deep-copy.
    """

    def __init__(self, key: str, dim: int, indices: list[int], full_shape: tuple[int, ...]):
        self.key = key
        self.dim = dim
        self.indices = list(indices)
        self.full_shape = tuple(full_shape)

    def __call__(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        key = prefix + self.key
        value = state_dict.get(key)
        if value is not None and tuple(value.shape) == self.full_shape:
            state_dict[key] = slice_tensor(value, self.dim, self.indices)


def slice_tensor(value: torch.Tensor, dim: int, indices: list[int]) -> torch.Tensor:
    """``value`` restricted to ``indices`` along ``dim`` (a narrow when they are contiguous)."""
    start = indices[0]
    if indices == list(range(start, start + len(indices))):
        return value.narrow(dim, start, len(indices)).contiguous()
    return value.index_select(dim, torch.tensor(indices, device=value.device))


def shard_parameter(
    gm: GraphModule, target: str, dim: int, indices: list[int], lazy_read: bool = True
) -> None:
    """Replace parameter ``target`` by its slice; slice checkpoint values on load too.

    ``lazy_read=False``: a second slice of an already sliced parameter (MoE experts, then their
    intermediate slice); the reader reads the first slice only, the hook cuts the rest."""
    module_path, _, name = target.rpartition(".")
    module = gm.get_submodule(module_path) if module_path else gm
    param = getattr(module, name)
    full_shape = tuple(param.shape)
    if param.device.type == "meta":
        shape = list(full_shape)
        shape[dim] = len(indices)
        local = torch.empty(shape, dtype=param.dtype, device="meta")
    else:
        local = slice_tensor(param.data, dim, indices)
    setattr(module, name, nn.Parameter(local, requires_grad=False))
    gm._register_load_state_dict_pre_hook(SliceOnLoad(target, dim, indices, full_shape))
    if lazy_read:
        gm.meta.setdefault(LOAD_SLICES_KEY, {})[target] = (dim, list(indices), full_shape)
