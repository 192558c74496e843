"""CachedSequenceInterface and resource handlers: registration, allocation, pool sizing."""

import pytest
import torch

from autodeploy.config import KvCacheConfig
from autodeploy.shim import (
    CachedSequenceInterface,
    PagedKVResourceHandler,
    PagedResourceHandler,
    StateResourceHandler,
    resolve_cache_dtype,
)
from autodeploy.utils.errors import ConfigError


def make_cm(**kv) -> CachedSequenceInterface:
    return CachedSequenceInterface(
        max_seq_len=16,
        max_batch_size=3,
        max_num_tokens=32,
        device="cpu",
        kv_cache_config={"tokens_per_block": 4, **kv},
    )


def test_add_resource_gives_unique_names():
    cm = make_cm()
    handler = PagedKVResourceHandler(2, 8, torch.float32)
    assert cm.add_resource("kv_cache", handler) == "kv_cache_0"
    assert cm.add_resource("kv_cache", handler) == "kv_cache_1"
    assert (
        cm.add_resource("ssm_state", StateResourceHandler(4, 8, dtype=torch.float32))
        == "ssm_state_0"
    )
    assert list(cm.resources) == ["kv_cache_0", "kv_cache_1", "ssm_state_0"]
    with pytest.raises(TypeError):
        cm.add_resource("x", object())


def test_initialize_allocates_paged_and_state_caches():
    cm = make_cm()
    cm.add_resource("kv_cache", PagedKVResourceHandler(2, 8, torch.float16))
    cm.add_resource("kv_cache", PagedKVResourceHandler(1, 4, torch.float32, kv_layout="NHD"))
    cm.add_resource("conv_state", StateResourceHandler(6, 3, dtype=torch.float32))
    assert cm.num_pages is None
    assert cm.initialize_resources() == 3
    # default pool: max_batch_size sequences of max_seq_len (3 x 4 pages) + the scratch page
    assert cm.num_pages == 13 and cm.num_usable_pages == 12
    caches = cm.caches
    assert caches["kv_cache_0"].shape == (13, 2, 2, 4, 8)
    assert caches["kv_cache_0"].dtype == torch.float16
    assert caches["kv_cache_1"].shape == (13, 4, 2, 1, 4)
    assert caches["conv_state_0"].shape == (4, 6, 3)  # max_batch_size + 1 spare slot
    assert all(not t.any() for t in caches.values())
    assert cm.bytes_per_page == 2 * 2 * 4 * 8 * 2 + 2 * 1 * 4 * 4 * 4
    assert cm.initialize_resources() == 0  # nothing new to allocate

    args = cm.named_args
    assert set(args) == {"input_ids", "position_ids", "kv_cache_0", "kv_cache_1", "conv_state_0"}
    assert cm.info.num_pages == 13  # the batch validator knows the pool size


def test_fixed_pool_from_max_tokens():
    cm = make_cm(max_tokens=10)
    cm.add_resource("kv_cache", PagedKVResourceHandler(2, 8, torch.float32))
    cm.initialize_resources()
    assert cm.num_pages == 3 + 1  # ceil(10 / 4) pages + scratch
    assert not cm.needs_resize()


def test_resize_paged_pool_keeps_state_caches():
    cm = make_cm()
    cm.add_resource("kv_cache", PagedKVResourceHandler(2, 8, torch.float32))
    cm.add_resource("state", StateResourceHandler(5, dtype=torch.float32))
    cm.initialize_resources()
    state = cm.caches["state_0"]
    cm.resize_paged_pool(7)
    assert cm.num_pages == 7 and cm.caches["kv_cache_0"].shape[0] == 7
    assert cm.caches["state_0"] is state


def test_kv_cache_config_forms():
    assert make_cm().kv_cache_config.tokens_per_block == 4
    cm = CachedSequenceInterface(8, 2, kv_cache_config=KvCacheConfig(tokens_per_block=2))
    assert cm.page_size == 2 and cm.info.page_size == 2
    assert CachedSequenceInterface(8, 2).page_size == KvCacheConfig().tokens_per_block
    with pytest.raises(ConfigError):
        CachedSequenceInterface(8, 2, kv_cache_config=3)


def test_cpu_pool_is_not_resized_and_to_moves_caches():
    cm = make_cm()
    cm.add_resource("kv_cache", PagedKVResourceHandler(2, 8, torch.float32))
    assert not cm.needs_resize()  # CPU: fixed size
    cm.initialize_resources()
    assert cm.to("cpu") is cm and cm.device.type == "cpu"


def test_resolve_cache_dtype():
    assert resolve_cache_dtype("auto", torch.bfloat16) is torch.bfloat16
    assert resolve_cache_dtype("float16", torch.float32) is torch.float16
    assert resolve_cache_dtype(torch.float32, torch.float16) is torch.float32
    with pytest.raises(ConfigError, match="fp8"):
        resolve_cache_dtype("fp8", torch.float16)


def test_paged_handler_layout_check_and_example():
    with pytest.raises(ConfigError, match="kv_layout"):
        PagedKVResourceHandler(2, 8, torch.float32, kv_layout="BHND")
    cm = make_cm()
    handler = PagedKVResourceHandler(2, 8, torch.float32)
    example = handler.example(cm.info)  # before the pool is sized: a meta stand-in
    assert example.device.type == "meta" and example.shape[1:] == (2, 2, 4, 8)
    assert handler.bytes_per_page(4) == 2 * 2 * 4 * 8 * 4


@pytest.mark.gpu
def test_cuda_resize_from_free_memory():
    cm = CachedSequenceInterface(
        max_seq_len=64,
        max_batch_size=2,
        max_num_tokens=64,
        device="cuda",
        kv_cache_config={"tokens_per_block": 16, "free_gpu_memory_fraction": 0.01},
    )
    cm.add_resource("kv_cache", PagedKVResourceHandler(2, 8, torch.float16))
    assert cm.needs_resize()
    cm.initialize_resources()
    assert cm.num_pages == min(2 * 4 + 1, 64 // 16 + 2 + 1)
    cm.resize_from_free_memory(reserve_bytes=0)
    # capped at what max_batch_size sequences can use
    assert cm.num_pages == 2 * 4 + 1
    assert cm.caches["kv_cache_0"].is_cuda


class _PagedIndexer(PagedResourceHandler):
    """A paged cache that is not KV (e.g. per-page scales): 3 int8 values per token."""

    def page_shape(self, page_size: int) -> tuple[int, ...]:
        return (page_size, 3)


def test_pool_sizing_counts_every_paged_handler_and_slots_are_counted_apart():
    cm = make_cm()
    cm.add_resource("kv_cache", PagedKVResourceHandler(2, 8, torch.float16))
    cm.add_resource("scales", _PagedIndexer(torch.int8))
    cm.add_resource("ssm_state", StateResourceHandler(4, 8, dtype=torch.float32))
    kv_bytes, scale_bytes = 2 * 2 * 4 * 8 * 2, 4 * 3 * 1
    assert cm.bytes_per_page == kv_bytes + scale_bytes
    assert set(cm.paged_resources) == {"kv_cache_0", "scales_0"}
    assert cm.bytes_per_slot == 4 * 8 * 4
    cm.initialize_resources()
    assert cm.caches["scales_0"].shape == (cm.num_pages, 4, 3)
    assert sum(h.nbytes(cm.info) for h in cm.paged_resources.values()) == (
        cm.num_pages * cm.bytes_per_page
    )
