"""initialize_cache: every registered cache is allocated and the graph runs."""

import torch
from cached_model_helpers import export_tiny, make_cm

from autodeploy.transforms import InferenceOptimizer

INSERT = {
    "move_inputs_to_device": {"stage": "weight_load"},
    "insert_cached_attention": {"stage": "cache_init"},
}


def test_allocates_the_registered_caches():
    _, gm = export_tiny()
    cm = make_cm(page_size=4, max_seq_len=16, max_batch_size=2)
    gm = InferenceOptimizer(None, INSERT)(cm, gm)
    assert cm.caches == {} and cm.num_pages is None
    gm = InferenceOptimizer(None, {"initialize_cache": {"stage": "cache_init"}})(cm, gm)
    assert cm.num_pages == 2 * 4 + 1  # 2 sequences of 16 tokens in pages of 4 + scratch
    assert sorted(cm.caches) == ["kv_cache_0", "kv_cache_1"]
    for cache in cm.caches.values():
        # auto's backend on CPU (sdpa) declares the NHD layout: [pages, page_size, k|v, n_kv, d]
        assert cache.shape == (9, 4, 2, 2, 8) and cache.dtype == torch.float32
    record = gm.meta["_autodeploy"]["transform_history"]["initialize_cache"]
    assert record.num_matches == 2 and not record.skipped
    cm.info.nest_sequences([[1, 2, 3]], [0], [[1]])
    assert gm(**cm.named_args).shape == (1, 3, 32)


def test_fixed_pool_size_and_cache_dtype_from_config():
    _, gm = export_tiny()
    cm = make_cm(page_size=4, max_tokens=20, dtype="float16")
    config = {**INSERT, "initialize_cache": {"stage": "cache_init"}}
    InferenceOptimizer(None, config)(cm, gm)
    assert cm.num_pages == 5 + 1
    assert all(c.dtype == torch.float16 for c in cm.caches.values())


def test_nothing_to_allocate_is_a_skip():
    gm = torch.fx.symbolic_trace(lambda input_ids: input_ids + 1)
    cm = make_cm()
    gm = InferenceOptimizer(None, {"initialize_cache": {"stage": "cache_init"}})(cm, gm)
    assert gm.meta["_autodeploy"]["transform_history"]["initialize_cache"].skipped
