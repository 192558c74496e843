"""resize_kv_cache: CPU keeps the fixed pool; CUDA sizes the pool from free memory."""

import pytest
import torch
from cached_model_helpers import CachedRunner, export_tiny, make_cm

from autodeploy.transforms import InferenceOptimizer
from autodeploy.utils.errors import CapacityError

PIPELINE = {
    "move_inputs_to_device": {"stage": "weight_load"},
    "insert_cached_attention": {"stage": "cache_init"},
    "initialize_cache": {"stage": "cache_init"},
    "resize_kv_cache": {"stage": "cache_init"},
}


def test_cpu_keeps_the_fixed_size():
    _, gm = export_tiny()
    cm = make_cm(page_size=4, max_seq_len=16, max_batch_size=2)
    gm = InferenceOptimizer(None, PIPELINE)(cm, gm)
    assert gm.meta["_autodeploy"]["transform_history"]["resize_kv_cache"].skipped
    assert cm.num_pages == 2 * 4 + 1


@pytest.mark.gpu
def test_cuda_sizes_the_pool_from_free_memory():
    model, gm = export_tiny()
    model, gm = model.cuda(), gm.cuda()
    cm = make_cm(
        page_size=4,
        max_seq_len=64,
        max_batch_size=4,
        max_num_tokens=128,
        device="cuda",
        free_gpu_memory_fraction=0.5,
    )
    gm = InferenceOptimizer(None, PIPELINE)(cm, gm)
    history = gm.meta["_autodeploy"]["transform_history"]
    assert not history["resize_kv_cache"].skipped
    # plenty of memory: capped at what max_batch_size sequences of max_seq_len can use
    assert cm.num_pages == 4 * 16 + 1
    assert all(c.is_cuda and c.shape[0] == cm.num_pages for c in cm.caches.values())
    got = CachedRunner(gm, cm).step([(0, [1, 2, 3, 4, 5, 6])])
    with torch.no_grad():
        expected = model(
            torch.tensor([[1, 2, 3, 4, 5, 6]], device="cuda"), torch.arange(6, device="cuda")[None]
        )[0]
    torch.testing.assert_close(got[0], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_pool_too_small_for_one_sequence_is_an_error():
    _, gm = export_tiny()
    cm = make_cm(page_size=4, max_seq_len=64, device="cuda", free_gpu_memory_fraction=1e-12)
    with pytest.raises(CapacityError, match="max_seq_len=64"):
        InferenceOptimizer(None, PIPELINE)(cm, gm.cuda())
