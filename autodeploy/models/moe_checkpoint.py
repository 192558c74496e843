"""Per-expert checkpoint tensors -> the stacked expert parameters of transformers 5 models.

Hub MoE checkpoints (and ``save_pretrained``) store one tensor per expert
(``...experts.{e}.w1.weight``, ``...experts.{e}.gate_proj.weight``); the model holds
``experts.gate_up_proj [E, 2I, H]`` and ``experts.down_proj [E, H, I]``. Transformers describes
the conversion per model type (its "conversion mapping": merge the expert list on dim 0, then
concatenate gate and up on dim 1). We apply the conversions of that shape ourselves:

- A load-state-dict pre-hook on the model takes each per-expert tensor out of the incoming
  state dict and copies it straight into its slice of the stacked parameter
  (``param[e, part * I:(part + 1) * I] = tensor``): no stacked copy is ever built, so at most one
  checkpoint file's tensors plus the model are in memory, never two copies of the experts.
- A tensor whose shape does not fit its slice is an error naming the tensor; after the last
  file, every expert slice of every parameter that received expert tensors must have been
  written, or the error names the missing tensors.

Expert parallelism: a module holding only experts ``[start, stop)`` sets
``module.expert_range = (start, stop)`` (its stacked parameters then have ``stop - start``
rows); the hook writes expert ``e`` to row ``e - start`` and drops the other experts' tensors
(the safetensors reader asks ``held_elsewhere`` first and does not read them at all).
With tensor parallelism inside the experts it also sets ``module.expert_slices = {param leaf:
(dim, kept indices, full size of dim)}``: each tensor is cut to the rows (dim 1: gate and up
parts) or columns (dim 2: down) this rank keeps before it is copied in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..utils.errors import ConfigError


@dataclass(frozen=True)
class ExpertConverter:
    """One transformers ``WeightConverter`` that stacks per-expert tensors into a parameter.

    ``sources[part]`` matches a per-expert key (group 1: the expert id); the parameter's name is
    the key with the match replaced by ``target``. Parts are concatenated on dim 1.
    """

    sources: tuple[re.Pattern[str], ...]
    target: str

    def match(self, key: str) -> tuple[str, int, int] | None:
        """(parameter name, expert id, part) of a per-expert checkpoint key, or None."""
        for part, pattern in enumerate(self.sources):
            found = pattern.search(key)
            if found:
                name = key[: found.start()] + self.target + key[found.end() :]
                return name, int(found.group(1)), part
        return None


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    # transformers' source patterns are regexes where '*' stands for the expert index.
    return re.compile(re.escape(pattern.replace("\\.", ".")).replace(r"\*", r"(\d+)"))


def expert_converter(converter: Any) -> ExpertConverter | None:
    """Our form of a transformers ``WeightConverter``; None if it is not an expert stacking."""
    ops = [(type(op).__name__, getattr(op, "dim", None)) for op in converter.operations]
    sources = list(converter.source_patterns)
    targets = list(converter.target_patterns)
    stacking = [("MergeModulelist", 0)] + ([("Concatenate", 1)] if len(sources) > 1 else [])
    if ops != stacking or len(targets) != 1 or not all("*" in s for s in sources):
        return None
    return ExpertConverter(tuple(_glob_to_regex(s) for s in sources), targets[0])


@dataclass
class _Progress:
    parts: int
    written: set[tuple[int, int]] = field(default_factory=set)
    source_keys: dict[tuple[int, int], str] = field(default_factory=dict)


class ExpertStacker:
    """The pre-hook and bookkeeping of one load (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        converters: list[ExpertConverter],
        rename: Callable[[str], str] | None = None,
    ):
        self.model, self.converters = model, converters
        self.rename_target = rename or (lambda name: name)
        self.progress: dict[str, _Progress] = {}

    def _target(self, name: str) -> tuple[nn.Module, torch.Tensor]:
        owner_name, _, leaf = name.rpartition(".")
        try:
            owner = self.model.get_submodule(owner_name)
            return owner, owner.get_parameter(leaf)
        except AttributeError:
            raise ConfigError(
                f"Checkpoint expert tensors map to {name!r}, which the model does not have. "
                "Check that the checkpoint matches the config (and `model_kwargs`)."
            ) from None

    def _match(self, key: str) -> tuple[str, int, int, int] | None:
        """(stacked parameter name, expert, part, number of parts) of a per-expert key."""
        for converter in self.converters:
            found = converter.match(key)
            if found is not None:
                name, expert, part = found
                # e.g. Mixtral's block_sparse_moe -> mlp
                return self.rename_target(name), expert, part, len(converter.sources)
        return None

    def _expert_range(self, name: str) -> tuple[int, int]:
        owner, param = self._target(name)
        return getattr(owner, "expert_range", (0, param.shape[0]))

    def _seen(self, key: str, name: str, expert: int, part: int, parts: int) -> None:
        progress = self.progress.setdefault(name, _Progress(parts))
        progress.source_keys[(expert, part)] = key
        progress.written.add((expert, part))

    def _write(
        self, key: str, tensor: torch.Tensor, name: str, expert: int, part: int, parts: int
    ) -> None:
        owner, param = self._target(name)
        start, stop = self._expert_range(name)
        if start <= expert < stop:  # else another rank's expert: dropped
            kept = getattr(owner, "expert_slices", {}).get(name.rpartition(".")[2])
            expected, rows, piece = _local_piece(tuple(param.shape), parts, part, kept)
            if expert - start >= param.shape[0] or tuple(tensor.shape) != expected:
                raise ConfigError(
                    f"Checkpoint tensor {key!r} has shape {tuple(tensor.shape)}, but expert "
                    f"{expert} of {name!r} {tuple(param.shape)} needs {expected}. Check that "
                    "the checkpoint matches the config (num experts, moe intermediate size)."
                )
            with torch.no_grad():
                param[expert - start, rows].copy_(piece(tensor))
        self._seen(key, name, expert, part, parts)

    def held_elsewhere(self, key: str) -> bool:
        """Whether ``key`` (a model-named checkpoint key) is a per-expert tensor of an expert
        this rank does not hold: the reader then never reads it (counted as seen here)."""
        found = self._match(key)
        if found is None:
            return False
        name, expert, part, parts = found
        start, stop = self._expert_range(name)
        if start <= expert < stop:
            return False
        self._seen(key, name, expert, part, parts)
        return True

    def hook(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        touched = set()
        for key in list(state_dict):
            found = self._match(key)
            if found is not None:
                name, expert, part, parts = found
                self._write(key, state_dict.pop(key), name, expert, part, parts)
                touched.add(name)
        for name in touched:  # counts as loaded; copying a tensor onto itself changes nothing
            state_dict[name] = self._target(name)[1]

    def check_complete(self) -> None:
        missing = []
        for name, progress in self.progress.items():
            start, stop = self._expert_range(name)
            for expert in range(start, stop):
                for part in range(progress.parts):
                    if (expert, part) not in progress.written:
                        missing.append(_missing_key(progress, name, expert, part))
        if missing:
            shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
            raise ConfigError(
                f"The checkpoint is missing {len(missing)} expert tensor(s): {shown}. Re-download "
                "the checkpoint or check that it matches the config (num experts)."
            )


def _local_piece(
    shape: tuple[int, ...], parts: int, part: int, kept: tuple[int, list[int], int] | None
) -> tuple[tuple[int, ...], slice, Callable[[torch.Tensor], torch.Tensor]]:
    """For one part of one expert: (full tensor shape, the rows of the local parameter it fills,
    how to cut the tensor to them). ``kept = (dim, indices, full size)``: the local parameter
    keeps only ``indices`` of its dim ``dim`` (tensor parallelism inside the experts)."""
    if kept is None:
        rows = shape[1] // parts
        return (rows, *shape[2:]), slice(part * rows, (part + 1) * rows), lambda t: t
    dim, indices, full_size = kept
    if dim == 2:  # columns of every part
        rows = shape[1] // parts
        columns = torch.tensor(indices)
        cut = lambda t: t.index_select(1, columns)  # noqa: E731
        return (rows, full_size), slice(part * rows, (part + 1) * rows), cut
    # dim 1: the kept rows of this part (indices are rows of the full [parts * rows] dim)
    full_rows = full_size // parts
    first = part * full_rows
    mine = [i - first for i in indices if first <= i < first + full_rows]
    offset = next(n for n, i in enumerate(indices) if first <= i < first + full_rows)
    selected = torch.tensor(mine)
    cut = lambda t: t.index_select(0, selected)  # noqa: E731
    return (full_rows, *shape[2:]), slice(offset, offset + len(mine)), cut


def _missing_key(progress: _Progress, name: str, expert: int, part: int) -> str:
    """The checkpoint key the missing slice would have had, from a sibling that was present."""
    for (other_expert, other_part), key in progress.source_keys.items():
        if other_part == part:
            return re.sub(rf"\.{other_expert}\.", f".{expert}.", key, count=1)
    return f"{name}[expert {expert}, part {part}]"


@contextmanager
def stack_experts_on_load(
    model: nn.Module,
    converters: list[ExpertConverter],
    rename: Callable[[str], str] | None = None,
) -> Iterator[ExpertStacker | None]:
    """Install the stacking pre-hook for one load; check completeness when the load succeeds.

    ``rename`` maps a stacked parameter's name as the converter builds it from the checkpoint
    key to the model's name (transformers' renames)."""
    if not converters:
        yield None
        return
    stacker = ExpertStacker(model, converters, rename)
    handle = model._register_load_state_dict_pre_hook(stacker.hook)
    try:
        yield stacker
    finally:
        handle.remove()
    stacker.check_complete()
