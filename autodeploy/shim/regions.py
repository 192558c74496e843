"""Batch-metadata regions: the named arrays ``SequenceInfo`` lays out in its one host buffer.

A ``Region`` is one named array of a step (``seq_len``, ``cache_loc``, ...). Its size follows
what it counts (``per``): ``"row"`` (one value per sequence row), ``"row+1"`` (cumulative
offsets), ``"token"``, ``"page"`` (the page ids of the step), or ``"fixed"`` (``width`` values).
``width`` multiplies that (e.g. two values per row). Every region has a device view (in the
device buffer) and a host mirror (``<name>_host``), both activatable by name as model inputs.

The built-in regions (``BUILTIN_REGIONS``) are written by ``SequenceInfo`` itself. An op family
or a plugin adds its own with ``SequenceInfo.add_region(Region(..., fill=fn))``: ``fn(step,
out)`` writes the region's values for the step into ``out`` (a numpy view of the host region,
``length(step)`` long) after the built-in fields are written and before the one host-to-device
copy, so an added region costs no extra copy. ``step`` is a ``BatchStep`` (numpy views of the
step's built-in fields). Regions are laid out small metadata first, then added regions, then
``cache_loc``, ``position_ids`` and ``input_ids`` (the copy covers the buffer up to the last
used token id).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..utils.errors import ConfigError

Per = Literal["fixed", "row", "row+1", "token", "page"]
_PER_KINDS = ("fixed", "row", "row+1", "token", "page")


@dataclass(frozen=True)
class BatchStep:
    """The step being written, for ``Region.fill``: counts and numpy views of its built-in
    fields (``rows`` long unless said otherwise; padding rows included, real rows first)."""

    rows: int
    num_real: int
    num_prefill: int
    num_tokens: int  # tokens the model sees (padding included)
    num_pages: int
    seq_len: np.ndarray
    input_pos: np.ndarray
    cu_seqlen: np.ndarray  # rows + 1
    slot_idx: np.ndarray
    cu_num_pages: np.ndarray  # rows + 1
    cache_loc: np.ndarray  # num_pages
    position_ids: np.ndarray  # num_tokens


@dataclass(frozen=True)
class Capacity:
    """The largest step a ``SequenceInfo`` holds (regions are sized for it)."""

    rows: int
    tokens: int
    pages: int


@dataclass(frozen=True)
class Region:
    """One named array of the step (see the module docstring)."""

    name: str
    dtype: torch.dtype
    per: Per = "row"
    width: int = 1
    description: str = ""
    # Added regions: writes the step's values into ``out`` (numpy, ``length(step)`` long).
    fill: Callable[[BatchStep, np.ndarray], None] | None = None
    host_only: bool = False  # the device view is the host mirror (read by Python code)
    internal: bool = False  # not a model input (e.g. last_token_idx for the logit gather)

    def __post_init__(self) -> None:
        if self.per not in _PER_KINDS:
            raise ConfigError(
                f"Region {self.name!r}: per must be one of {', '.join(_PER_KINDS)}, got "
                f"{self.per!r}."
            )
        if self.name.endswith("_host") or not self.name.isidentifier():
            raise ConfigError(
                f"Region name {self.name!r} must be an identifier without the '_host' suffix "
                "(the host mirror gets it)."
            )
        if self.width < 1:
            raise ConfigError(f"Region {self.name!r}: width must be >= 1, got {self.width}.")

    def capacity(self, cap: Capacity) -> int:
        units = {"fixed": 1, "row": cap.rows, "row+1": cap.rows + 1, "token": cap.tokens}
        return units.get(self.per, cap.pages) * self.width

    def length(self, rows: int, tokens: int, pages: int) -> int:
        """Elements of the step's view (``rows``/``tokens``/``pages`` of the step)."""
        units = {"fixed": 1, "row": rows, "row+1": rows + 1, "token": tokens, "page": pages}
        return units[self.per] * self.width


MODEL_INPUTS: tuple[str, ...] = ("input_ids", "position_ids")

# Order matters: the copy covers the buffer up to the end of the used input_ids, so the small
# metadata comes first and the token arrays last (added regions go before cache_loc).
BUILTIN_REGIONS: tuple[Region, ...] = (
    Region(
        "batch_info", torch.int32, "fixed", 3,
        "num_prefill_seqs, num_prefill_tokens, num_decode_seqs", host_only=True,
    ),
    Region("seq_len", torch.int32, "row", description="new tokens per sequence"),
    Region("input_pos", torch.int32, "row", description="tokens already in the cache"),
    Region("seq_len_with_cache", torch.int32, "row", description="input_pos + seq_len"),
    Region("last_page_len", torch.int32, "row", description="tokens in the last page"),
    Region("cu_seqlen", torch.int32, "row+1", description="token offsets of the sequences"),
    Region("cu_num_pages", torch.int32, "row+1", description="offsets into cache_loc"),
    Region("slot_idx", torch.int64, "row", description="state slot of each sequence"),
    Region("last_token_idx", torch.int64, "row", internal=True),
    Region("cache_loc", torch.int32, "page", description="page ids, sequence by sequence"),
    Region("position_ids", torch.int64, "token"),
    Region("input_ids", torch.int64, "token"),
)  # fmt: skip
_TAIL = ("cache_loc", "position_ids", "input_ids")

# The built-in metadata a transform may activate (plus "<name>_host" for each).
ARG_NAMES: tuple[str, ...] = tuple(
    r.name for r in BUILTIN_REGIONS if not r.internal and r.name not in MODEL_INPUTS
)


def ordered_regions(added: list[Region]) -> list[Region]:
    """The buffer layout: built-in metadata, added regions, then the tail arrays."""
    head = [r for r in BUILTIN_REGIONS if r.name not in _TAIL]
    tail = [r for r in BUILTIN_REGIONS if r.name in _TAIL]
    return head + list(added) + tail


def capacity_for(max_batch_size: int, max_num_tokens: int, max_seq_len: int, page_size: int):
    """Rows >= 2 and tokens >= 8 so example/export batches fit even with tiny limits."""
    rows = max(max_batch_size, 2)
    pages = rows * math.ceil(max_seq_len / page_size)
    return Capacity(rows=rows, tokens=max(max_num_tokens, 2 * 4), pages=pages)
