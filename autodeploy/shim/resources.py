"""Resource handlers: descriptions of the caches a cached op needs, allocated by the interface.

A handler says *what* to allocate (shape per page or per state slot, dtype) and declares its
bytes per page (``bytes_per_page(page_size)``) or per slot (``bytes_per_slot()``); the
``CachedSequenceInterface`` decides *how many* (pages of the pool, state slots) and where, and
sizes the paged pool from the bytes per page of every paged handler together.

- ``PagedResourceHandler``: anything that lives in the paged pool, ``[num_pages,
  *page_shape(page_size)]``; a page id from ``cache_loc`` indexes dim 0.
- ``PagedKVResourceHandler``: one layer's paged KV cache, laid out per the contract as
  ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` ("HND"; index 0 = K, 1 = V), or
  ``[num_pages, page_size, 2, num_kv_heads, head_dim]`` ("NHD") for backends that declare it.
- ``StateResourceHandler``: a per-sequence state (Mamba SSM / conv state, a running sum),
  ``[num_state_slots, *state_shape]``, addressed by the ``slot_idx`` metadata (one spare slot,
  ``SequenceInfo.spare_slot``, for CUDA-graph padding rows). A cached op that uses one must
  read ``slot_idx`` (the insertion routine checks the family's convention passes it).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

from ..utils.errors import ConfigError

if TYPE_CHECKING:
    from .sequence_info import SequenceInfo

_CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_cache_dtype(dtype: str | torch.dtype, fallback: torch.dtype) -> torch.dtype:
    """``"auto"`` -> ``fallback`` (the model's dtype); a name or torch dtype -> that dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return fallback
    if dtype not in _CACHE_DTYPES:
        raise ConfigError(
            f"kv_cache_config.dtype={dtype!r} is not supported; use 'auto' or one of "
            f"{', '.join(_CACHE_DTYPES)}."
        )
    return _CACHE_DTYPES[dtype]


class ResourceHandler(ABC):
    """Describes one cache tensor. ``is_paged`` handlers live in the paged pool."""

    is_paged: bool = False

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    @abstractmethod
    def shape(self, info: SequenceInfo) -> tuple[int, ...]:
        """Shape of the tensor for the current pool size / slot count of ``info``."""

    def allocate(self, info: SequenceInfo) -> torch.Tensor:
        """A zero-filled tensor on ``info.device`` (zeros: padding rows never read garbage)."""
        return torch.zeros(self.shape(info), dtype=self.dtype, device=info.device)

    def example(self, info: SequenceInfo) -> torch.Tensor:
        """A meta tensor of the right shape and dtype (graph metadata, no memory)."""
        return torch.empty(self.shape(info), dtype=self.dtype, device="meta")

    def nbytes(self, info: SequenceInfo) -> int:
        return math.prod(self.shape(info)) * self.dtype.itemsize

    def bytes_per_page(self, page_size: int) -> int:
        """Bytes one page of the pool costs this cache (0: not paged)."""
        return 0

    def bytes_per_slot(self) -> int:
        """Bytes one state slot costs this cache (0: not per slot)."""
        return 0

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class PagedResourceHandler(ResourceHandler):
    """A cache in the paged pool: ``[num_pages, *page_shape(page_size)]``."""

    is_paged = True

    @abstractmethod
    def page_shape(self, page_size: int) -> tuple[int, ...]:
        """The shape of one page of this cache."""

    def bytes_per_page(self, page_size: int) -> int:
        return math.prod(self.page_shape(page_size)) * self.dtype.itemsize

    def example(self, info: SequenceInfo) -> torch.Tensor:
        """Meta tensor for graph metadata; the page count is a stand-in until the pool is sized."""
        num_pages = info.num_pages if info.num_pages is not None else 2
        return torch.empty(
            (num_pages, *self.page_shape(info.page_size)), dtype=self.dtype, device="meta"
        )

    def shape(self, info: SequenceInfo) -> tuple[int, ...]:
        if info.num_pages is None:
            raise RuntimeError("The paged pool has no size yet (SequenceInfo.num_pages is None).")
        return (info.num_pages, *self.page_shape(info.page_size))


class PagedKVResourceHandler(PagedResourceHandler):
    """One attention layer's K and V pages (see the module docstring for the layouts)."""

    LAYOUTS = ("HND", "NHD")

    def __init__(
        self, num_kv_heads: int, head_dim: int, dtype: torch.dtype, kv_layout: str = "HND"
    ):
        super().__init__(dtype)
        if kv_layout not in self.LAYOUTS:
            raise ConfigError(
                f"PagedKVResourceHandler: kv_layout must be one of {self.LAYOUTS}, "
                f"got {kv_layout!r}."
            )
        self.num_kv_heads = int(num_kv_heads)
        self.head_dim = int(head_dim)
        self.kv_layout = kv_layout

    def page_shape(self, page_size: int) -> tuple[int, ...]:
        if self.kv_layout == "HND":
            return (2, self.num_kv_heads, page_size, self.head_dim)
        return (page_size, 2, self.num_kv_heads, self.head_dim)


class StateResourceHandler(ResourceHandler):
    """A fixed-size state per sequence slot: ``[num_state_slots, *state_shape]``."""

    def __init__(self, *state_shape: int, dtype: torch.dtype):
        super().__init__(dtype)
        self.state_shape = tuple(int(d) for d in state_shape)

    def shape(self, info: SequenceInfo) -> tuple[int, ...]:
        return (info.num_state_slots, *self.state_shape)

    def bytes_per_slot(self) -> int:
        return math.prod(self.state_shape) * self.dtype.itemsize
