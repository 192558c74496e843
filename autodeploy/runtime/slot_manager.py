"""SlotManager: which per-sequence state slot (Mamba SSM / conv state) belongs to which request.

State caches have ``max_batch_size + 1`` slots (``SequenceInfo.num_state_slots``); slot
``max_batch_size`` is the spare slot that CUDA-graph padding rows write into, so slots
``0 .. max_batch_size - 1`` are handed out. A request takes a slot when the scheduler admits it
and gives it back when it finishes, is aborted, or fails; a request that finds no free slot waits
in the queue. The slot's state needs no clearing: a sequence's first prefill starts from zeros
(``input_pos == 0``) whatever the slot held.
"""

from __future__ import annotations

from collections.abc import Hashable

from ..utils.errors import CapacityError


class SlotManager:
    """Free list of state slots (see the module docstring)."""

    def __init__(self, num_slots: int):
        if num_slots < 1:
            raise CapacityError(f"SlotManager needs at least one slot, got {num_slots}.")
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, -1, -1))  # pop() hands out 0, 1, 2, ...
        self._owner_slot: dict[Hashable, int] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._owner_slot)

    def slot_of(self, owner: Hashable) -> int | None:
        return self._owner_slot.get(owner)

    def take(self, owner: Hashable) -> int:
        """A free slot for ``owner`` (its current slot if it has one)."""
        if owner in self._owner_slot:
            return self._owner_slot[owner]
        if not self._free:
            raise CapacityError(
                f"no free state slot for {owner!r}: all {self.num_slots} slots are in use "
                "(the scheduler admits a request only when one is free)."
            )
        slot = self._free.pop()
        self._owner_slot[owner] = slot
        return slot

    def free(self, owner: Hashable) -> None:
        """Give ``owner``'s slot back (no-op if it holds none)."""
        slot = self._owner_slot.pop(owner, None)
        if slot is not None:
            self._free.append(slot)
