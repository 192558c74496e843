"""KVBlockManager: which pages of the paged KV cache belong to which sequence.

The pool has ``num_pages`` pages of ``page_size`` tokens. Page 0 is the reserved scratch page
(padding / dummy sequences write there, see the cached-attention contract), so pages
``1 .. num_pages - 1`` are handed out.

Admission policy (the simplest one that can never fail half-way): a sequence *reserves* the
pages for its whole maximum length (prompt + max new tokens) when it is admitted, and the pages
themselves are *assigned* lazily as it grows (``ensure_capacity`` before every step). Because
every assignment is covered by a reservation, a running sequence never runs out of cache and
nothing is ever preempted; a sequence that finishes early returns its unused reservation.
``can_reserve`` says no when the free (unreserved) pages are not enough, and the scheduler
keeps the request waiting until running sequences finish.
"""

from __future__ import annotations

from collections.abc import Hashable

from ..utils.errors import CapacityError

SCRATCH_PAGE = 0


class KVBlockManager:
    """Page bookkeeping for the paged KV cache (see the module docstring)."""

    def __init__(self, num_pages: int, page_size: int):
        if num_pages < 2:
            raise CapacityError(
                f"The KV cache has {num_pages} page(s); at least 2 are needed (page 0 is the "
                "reserved scratch page). Raise kv_cache_config.max_tokens or "
                "free_gpu_memory_fraction."
            )
        if page_size < 1:
            raise CapacityError(f"page_size must be >= 1, got {page_size}.")
        self.num_pages = num_pages
        self.page_size = page_size
        # Pop from the end: hand out low page ids first (1, 2, 3, ...).
        self._free: list[int] = list(range(num_pages - 1, SCRATCH_PAGE, -1))
        self._pages: dict[Hashable, list[int]] = {}
        self._reserved: dict[Hashable, int] = {}  # pages promised to a sequence (incl. assigned)
        self._num_reserved = 0

    # ------------------------------------------------------------------ sizes

    @property
    def num_usable_pages(self) -> int:
        """Pages that can hold sequences (all but the scratch page)."""
        return self.num_pages - 1

    @property
    def capacity_tokens(self) -> int:
        """The most tokens one sequence could ever hold (the whole usable pool)."""
        return self.num_usable_pages * self.page_size

    @property
    def num_unreserved_pages(self) -> int:
        return self.num_usable_pages - self._num_reserved

    @property
    def num_free_pages(self) -> int:
        """Pages not assigned to any sequence (some may still be reserved)."""
        return len(self._free)

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    # ------------------------------------------------------------------ reservation

    def can_reserve(self, num_tokens: int) -> bool:
        return self.pages_for(num_tokens) <= self.num_unreserved_pages

    def reserve(self, seq_id: Hashable, num_tokens: int) -> None:
        """Promise ``seq_id`` enough pages for ``num_tokens`` tokens (its whole max length)."""
        if seq_id in self._reserved:
            raise KeyError(f"sequence {seq_id!r} already holds a reservation")
        needed = self.pages_for(num_tokens)
        if needed > self.num_unreserved_pages:
            raise CapacityError(
                f"Cannot reserve {needed} KV pages ({num_tokens} tokens) for sequence {seq_id!r}: "
                f"{self.num_unreserved_pages} of {self.num_usable_pages} pages are unreserved."
            )
        self._reserved[seq_id] = needed
        self._num_reserved += needed
        self._pages[seq_id] = []

    def ensure_capacity(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        """Assign pages so ``seq_id`` can hold ``num_tokens`` tokens; return its page list.

        The returned list is the manager's own (it grows in place); do not modify it.
        """
        pages = self._pages[seq_id]
        if len(pages) * self.page_size >= num_tokens:  # the common case: no new page needed
            return pages
        needed = self.pages_for(num_tokens)
        if needed > self._reserved[seq_id]:
            raise CapacityError(
                f"Sequence {seq_id!r} needs {needed} KV pages for {num_tokens} tokens but "
                f"reserved only {self._reserved[seq_id]}."
            )
        while len(pages) < needed:
            pages.append(self._free.pop())
        return pages

    def pages(self, seq_id: Hashable) -> list[int]:
        return self._pages[seq_id]

    def free(self, seq_id: Hashable) -> None:
        """Return the pages and the reservation of ``seq_id`` (no-op if it holds none)."""
        pages = self._pages.pop(seq_id, None)
        if pages is None:
            return
        self._free.extend(reversed(pages))
        self._num_reserved -= self._reserved.pop(seq_id)

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._pages
