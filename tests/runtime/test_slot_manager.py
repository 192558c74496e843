"""SlotManager: state slots are handed out once, returned on free, and never leak."""

from __future__ import annotations

import pytest

from autodeploy.runtime.slot_manager import SlotManager
from autodeploy.utils.errors import CapacityError


def test_slots_are_unique_reused_after_free_and_exhaustion_is_an_error():
    slots = SlotManager(3)
    taken = [slots.take(owner) for owner in ("a", "b", "c")]
    assert taken == [0, 1, 2] and slots.num_free == 0 and slots.num_used == 3
    assert slots.take("b") == 1  # an owner keeps its slot
    with pytest.raises(CapacityError, match="all 3 slots are in use"):
        slots.take("d")
    slots.free("b")
    slots.free("b")  # freeing twice is a no-op
    assert slots.slot_of("b") is None and slots.num_free == 1
    assert slots.take("d") == 1  # the freed slot is reused
    for owner in ("a", "c", "d"):
        slots.free(owner)
    assert slots.num_free == 3 and slots.num_used == 0


def test_at_least_one_slot():
    with pytest.raises(CapacityError):
        SlotManager(0)
