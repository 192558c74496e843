"""CachedSequenceInterface: the packed batch, the caches, and the size of the paged pool.

API
---
``CachedSequenceInterface(max_seq_len, max_batch_size, max_num_tokens=None, device="cpu",
kv_cache_config=None)`` (``kv_cache_config``: ``autodeploy.config.KvCacheConfig`` or a dict of
its fields; its ``tokens_per_block`` is the page size).

- ``info``: the ``SequenceInfo``; ``device``; ``kv_cache_config``.
- ``add_resource(name, handler) -> str``: register a cache; returns a unique name
  (``"<name>_<i>"``, i counting per ``name``) that is also its graph input name.
- ``resources`` / ``caches``: handlers and allocated tensors by name.
- ``initialize_resources() -> int``: allocate every registered cache not allocated yet; the paged
  pool gets ``initial_num_pages()`` pages (see below).
- ``named_args``: ``{**info.named_args, **caches}``; the model is called as ``gm(**cm.named_args)``.
- ``to(device)``: move the batch buffers and caches.
- ``num_pages``: pages in the pool, page 0 (scratch) included; the block manager hands out pages
  ``1 .. num_pages - 1``. ``num_usable_pages``; ``bytes_per_page`` (every paged handler's
  ``bytes_per_page`` together: the pool is sized from it); ``bytes_per_slot`` (every per-slot
  state handler together).
- ``needs_resize()``; ``resize_from_free_memory(reserve_bytes)``; ``resize_paged_pool(num_pages)``.

Sizing of the paged pool: with ``kv_cache_config.max_tokens`` set, ``ceil(max_tokens /
page_size)`` pages plus the scratch page, always. Otherwise ``initial_num_pages`` is what
``max_batch_size`` sequences of ``max_seq_len`` tokens can use, plus the scratch page; on CUDA the
``resize_kv_cache`` transform then measures a forward at ``max_num_tokens`` and gives the pool
``free_gpu_memory_fraction`` of the free memory that remains (``resize_from_free_memory``). On
CUDA, before that resize, the initial pool is capped at a small estimate (enough pages for one
step of ``max_num_tokens`` tokens), so a large configuration does not run out of memory before it
is measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..utils.errors import CapacityError, ConfigError
from ..utils.logger import logger
from .resources import ResourceHandler
from .sequence_info import SequenceInfo

if TYPE_CHECKING:
    from ..config.settings import KvCacheConfig

_MIB = 1 << 20


def _kv_cache_config(value: Any) -> KvCacheConfig:
    from ..config.settings import KvCacheConfig

    if value is None:
        return KvCacheConfig()
    if isinstance(value, KvCacheConfig):
        return value
    if isinstance(value, Mapping):
        return KvCacheConfig(**value)
    raise ConfigError(
        f"kv_cache_config must be a KvCacheConfig or a mapping, got {type(value).__name__}."
    )


class CachedSequenceInterface:
    """Owns the ``SequenceInfo``, the resource handlers and the caches (see module docstring)."""

    def __init__(
        self,
        max_seq_len: int,
        max_batch_size: int,
        max_num_tokens: int | None = None,
        device: str | torch.device = "cpu",
        kv_cache_config: KvCacheConfig | Mapping[str, Any] | None = None,
    ):
        self.kv_cache_config = _kv_cache_config(kv_cache_config)
        self.info = SequenceInfo(
            max_seq_len=max_seq_len,
            max_batch_size=max_batch_size,
            max_num_tokens=max_num_tokens,
            page_size=self.kv_cache_config.tokens_per_block,
            device=device,
        )
        self._resources: dict[str, ResourceHandler] = {}
        self._caches: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ basics

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def page_size(self) -> int:
        return self.info.page_size

    @property
    def named_args(self) -> dict[str, torch.Tensor]:
        return {**self.info.named_args, **self._caches}

    @property
    def resources(self) -> dict[str, ResourceHandler]:
        return dict(self._resources)

    @property
    def caches(self) -> dict[str, torch.Tensor]:
        return dict(self._caches)

    def to(self, device: str | torch.device) -> CachedSequenceInterface:
        self.info.to(device)
        self._caches = {name: t.to(device) for name, t in self._caches.items()}
        return self

    # ------------------------------------------------------------------ resources

    def add_resource(self, name: str, handler: ResourceHandler) -> str:
        """Register ``handler`` under a unique ``"<name>_<i>"`` and return that name."""
        if not isinstance(handler, ResourceHandler):
            raise TypeError(f"add_resource({name!r}): expected a ResourceHandler, got {handler!r}")
        index = sum(1 for key in self._resources if key.rsplit("_", 1)[0] == name)
        unique = f"{name}_{index}"
        while unique in self._resources:
            index += 1
            unique = f"{name}_{index}"
        self._resources[unique] = handler
        return unique

    @property
    def paged_resources(self) -> dict[str, ResourceHandler]:
        return {k: h for k, h in self._resources.items() if h.is_paged}

    @property
    def bytes_per_page(self) -> int:
        """Bytes one page takes over all paged caches together (0 without paged caches)."""
        return sum(h.bytes_per_page(self.page_size) for h in self.paged_resources.values())

    @property
    def bytes_per_slot(self) -> int:
        """Bytes one state slot takes over all per-slot caches together."""
        return sum(h.bytes_per_slot() for h in self._resources.values())

    @property
    def num_pages(self) -> int | None:
        """Pages in the pool including the scratch page 0 (None before initialization)."""
        return self.info.num_pages

    @property
    def num_usable_pages(self) -> int:
        return 0 if self.info.num_pages is None else self.info.num_pages - 1

    def initial_num_pages(self) -> int:
        info, cfg = self.info, self.kv_cache_config
        if cfg.max_tokens is not None:
            return math.ceil(cfg.max_tokens / info.page_size) + 1
        full = info.max_batch_size * info.max_pages_per_seq + 1
        if self.needs_resize():  # sized for real by resize_kv_cache; keep the first pool small
            one_step = math.ceil(info.max_num_tokens / info.page_size) + info.max_batch_size + 1
            return min(full, one_step)
        return full

    def initialize_resources(self) -> int:
        """Allocate every cache not allocated yet; returns how many were allocated."""
        if self.info.num_pages is None:
            self.info.set_num_pages(self.initial_num_pages())
        allocated = 0
        for name, handler in self._resources.items():
            if name not in self._caches:
                self._caches[name] = handler.allocate(self.info)
                allocated += 1
        if self.paged_resources:
            logger.info(
                "paged KV cache: %d pages x %d tokens (%d usable pages), %.1f MiB in %d caches",
                self.info.num_pages,
                self.page_size,
                self.num_usable_pages,
                self.info.num_pages * self.bytes_per_page / _MIB,
                len(self.paged_resources),
            )
        return allocated

    # ------------------------------------------------------------------ resizing

    def needs_resize(self) -> bool:
        """True when the paged pool is sized from free GPU memory (CUDA, no fixed max_tokens)."""
        return (
            bool(self.paged_resources)
            and self.device.type == "cuda"
            and self.kv_cache_config.max_tokens is None
        )

    def resize_paged_pool(self, num_pages: int) -> None:
        """Re-allocate every paged cache with ``num_pages`` pages (contents are dropped)."""
        for name in self.paged_resources:
            self._caches.pop(name, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.info.set_num_pages(num_pages)
        for name, handler in self.paged_resources.items():
            self._caches[name] = handler.allocate(self.info)

    def resize_from_free_memory(self, reserve_bytes: int) -> int:
        """Give the paged pool ``free_gpu_memory_fraction`` of the free memory left after
        ``reserve_bytes`` (what a forward at max_num_tokens needs); returns the new page count."""
        per_page = self.bytes_per_page
        if per_page == 0:
            return self.num_pages or 0
        for name in self.paged_resources:  # measure with the old pool freed
            self._caches.pop(name, None)
        torch.cuda.empty_cache()
        free, _total = torch.cuda.mem_get_info(self.device)
        fraction = self.kv_cache_config.free_gpu_memory_fraction
        budget = max(0, free - reserve_bytes) * fraction
        useful = self.info.max_batch_size * self.info.max_pages_per_seq + 1
        num_pages = min(int(budget // per_page), useful)
        needed = self.info.max_pages_per_seq + 1
        if num_pages < needed:
            raise CapacityError(
                f"The KV cache gets {budget / _MIB:.0f} MiB ({free / _MIB:.0f} MiB free, "
                f"{reserve_bytes / _MIB:.0f} MiB kept for the forward pass, fraction "
                f"{fraction}), room for {num_pages} pages of {self.page_size} tokens, but one "
                f"sequence of max_seq_len={self.info.max_seq_len} needs {needed} pages "
                f"({needed * per_page / _MIB:.1f} MiB). Lower max_seq_len or max_num_tokens, "
                "raise kv_cache_config.free_gpu_memory_fraction, or use a smaller model."
            )
        self.resize_paged_pool(num_pages)
        logger.info(
            "KV cache sized from free memory: %d pages (%d tokens, %.1f MiB; %.1f MiB free, "
            "%.1f MiB reserved for the forward, fraction %.2f)",
            num_pages,
            (num_pages - 1) * self.page_size,
            num_pages * per_page / _MIB,
            free / _MIB,
            reserve_bytes / _MIB,
            fraction,
        )
        return num_pages
