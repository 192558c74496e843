"""KVBlockManager: page 0 never handed out, lazy growth within reservations, clean refusal."""

import pytest

from autodeploy.runtime.kv_block_manager import KVBlockManager
from autodeploy.utils.errors import CapacityError


def test_pages_grow_lazily_within_the_reservation():
    manager = KVBlockManager(num_pages=8, page_size=4)
    assert manager.capacity_tokens == 28
    manager.reserve("a", 10)  # 3 pages promised
    assert manager.num_unreserved_pages == 4
    assert manager.ensure_capacity("a", 1) == [1]
    assert manager.ensure_capacity("a", 4) == [1]
    assert manager.ensure_capacity("a", 5) == [1, 2]
    assert manager.ensure_capacity("a", 10) == [1, 2, 3]
    with pytest.raises(CapacityError, match="reserved only 3"):
        manager.ensure_capacity("a", 13)


def test_scratch_page_is_never_handed_out_and_freed_pages_return():
    manager = KVBlockManager(num_pages=5, page_size=2)
    manager.reserve("a", 8)
    pages = list(manager.ensure_capacity("a", 8))
    assert sorted(pages) == [1, 2, 3, 4]
    assert not manager.can_reserve(1)
    with pytest.raises(CapacityError, match="0 of 4 pages are unreserved"):
        manager.reserve("b", 1)
    manager.free("a")
    assert manager.num_free_pages == 4 and manager.num_unreserved_pages == 4
    manager.reserve("b", 3)
    assert 0 not in manager.ensure_capacity("b", 3)
    manager.free("b")
    manager.free("b")  # freeing twice is a no-op


def test_reservations_add_up():
    manager = KVBlockManager(num_pages=7, page_size=4)
    manager.reserve("a", 9)  # 3 pages
    assert manager.can_reserve(12) and not manager.can_reserve(13)
    manager.reserve("b", 12)
    assert manager.num_unreserved_pages == 0


def test_a_pool_without_usable_pages_is_an_error():
    with pytest.raises(CapacityError, match="at least 2"):
        KVBlockManager(num_pages=1, page_size=4)
