"""The ``sdpa`` backend (batched, no loop over sequences) against the reference contract.

Every schedule of ``test_torch_cached_attention`` runs through ``sdpa_cached_attention``: each
step's output is compared with ``torch_attention`` over the whole sequence so far, and the cache
writes with the reference op's.
"""

import pytest
import torch
from test_torch_cached_attention import PagedHarness, attention_node, run_schedule

import autodeploy  # noqa: F401  (registers the ops)
from autodeploy.custom_ops.attention.descriptor import AttentionRegistry

sdpa_attention = torch.ops.auto_deploy.sdpa_cached_attention


def SdpaHarness(lengths, **kwargs):  # noqa: N802  (a harness factory)
    """A PagedHarness for the sdpa op: its cache is in the NHD layout the backend declares."""
    return PagedHarness(lengths, op=sdpa_attention, kv_layout="NHD", **kwargs)


SCHEDULES = {
    "prefill_several_sequences": ([9, 4, 13], {}, [[(0, 9), (1, 4), (2, 13)]]),
    "chunked_prefill_then_decode": ([14], {}, [[(0, 5)], [(0, 6)], [(0, 1)], [(0, 1)]]),
    "decode_only_across_pages": ([10, 7], {}, [[(0, 3), (1, 3)]] + [[(0, 1), (1, 1)]] * 4),
    "mixed_prefill_and_decode": (
        [12, 10, 6],
        {},
        [[(0, 4)], [(1, 5), (0, 1)], [(2, 3), (1, 2), (0, 1)], [(2, 3), (0, 1), (1, 1)]],
    ),
    "sliding_window": ([15, 9], {"sliding_window": 5}, [[(0, 10), (1, 6)], [(0, 1), (1, 1)]]),
    "logit_cap_and_scale": ([9, 9], {"logit_cap": 2.0, "scale": 0.7}, [[(0, 7), (1, 3)]]),
    "sinks": (
        [8, 7],
        {"sinks": torch.tensor([0.5, -1.0, 2.0, 0.0])},
        [[(0, 5), (1, 6)], [(0, 1)], [(0, 2), (1, 1)]],
    ),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_matches_full_attention_step_by_step(name):
    lengths, features, steps = SCHEDULES[name]
    run_schedule(SdpaHarness(lengths, **features), steps)


def test_gqa_with_one_kv_head_and_page_size_one():
    harness = SdpaHarness([6, 3], num_heads=6, num_kv_heads=1, page_size=1)
    run_schedule(harness, [[(0, 5), (1, 2)], [(0, 1), (1, 1)]])


def test_writes_the_same_cache_as_the_reference():
    steps = [[(0, 6), (1, 3)], [(1, 2), (0, 1)], [(0, 1), (1, 1)]]
    reference = PagedHarness([9, 7])
    batched = SdpaHarness([9, 7])
    for schedule in steps:
        reference.step(schedule)
        batched.step(schedule)
    # NHD [pages, page_size, 2, n_kv, d] -> the reference's HND [pages, 2, n_kv, page_size, d]
    assert torch.equal(reference.kv_cache, batched.kv_cache.permute(0, 2, 3, 1, 4))


def test_padding_rows_only_touch_the_scratch_page():
    harness = SdpaHarness([5, 5])
    harness.step([(0, 4), (1, 4)])
    harness.info.set_padded_batch_sizes([4])
    before = harness.kv_cache[1:].clone()
    assert harness.step([(0, 1), (1, 1)]) <= 1e-5  # 2 real rows + 2 padding rows
    changed = (harness.kv_cache[1:] != before).flatten(1).any(1).nonzero().flatten() + 1
    assert set(changed.tolist()) <= {harness.pages[0][1], harness.pages[1][1]}


def test_bfloat16():
    harness = SdpaHarness([12], dtype=torch.bfloat16)
    run_schedule(harness, [[(0, 8)], [(0, 1)], [(0, 3)]], atol=2e-2)


def test_descriptor_accepts_what_the_reference_accepts():
    backend = AttentionRegistry.get("sdpa")
    backend.check_supported(attention_node())
    assert backend.get_cached_attention_op() is sdpa_attention


def test_layers_of_one_step_share_a_plan_and_a_new_step_replans():
    """Two "layers" (two caches, different sliding windows) per step, metadata changing in place
    between steps: every call must still equal the reference."""
    layers = [
        SdpaHarness([9, 7], seed=1),
        SdpaHarness([9, 7], seed=2, sliding_window=3),
    ]
    for layer in layers[1:]:  # one SequenceInfo for the whole model, as in a real build
        layer.info = layers[0].info
    for schedule in [[(0, 6), (1, 3)], [(1, 2), (0, 1)], [(0, 1), (1, 1)], [(0, 1), (1, 1)]]:
        for layer in layers:
            assert layer.step(schedule) <= 1e-5, schedule


def test_declares_the_nhd_cache_layout():
    """The cache the build allocates is the layout the op reads: one row per cached token."""
    from autodeploy.config import KvCacheConfig

    backend = AttentionRegistry.get("sdpa")
    handler = backend.get_cache_initializers(attention_node(), KvCacheConfig(dtype="float32"))
    assert handler["kv_cache"].page_shape(16) == (16, 2, 2, 8)  # page_size, k|v, n_kv, head_dim
