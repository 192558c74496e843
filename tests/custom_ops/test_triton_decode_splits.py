"""Triton decode key-range splits under a CUDA-graph capture phase (``shim/capture_phase.py``).

A captured graph keeps the split count chosen at capture. Under the capture phase the launcher
sizes it for ``max_kv_len`` (the longest context), so a replay with short contexts runs with most
splits empty; those must weigh nothing in the reduce. Checked here on every context length
1 .. max_seq_len against the reference and the 1-split launch, and the count itself against the
one computed for max_seq_len (outside the phase: unchanged, from ``cache_loc``'s length).

CPU: the interpreter normally launches 1 split; ``pretend_gpu`` makes the launcher size splits
as on a GPU (an H100's 132 SMs, or one so large that the count is the key tiles of max_seq_len),
so the interpreted kernels run the many-split case.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_triton_attention import (  # noqa: E402
    DEVICE,
    KERNELS_RUN_HERE,
    Case,
    make_batch,
    reference_attention,
)

from autodeploy.custom_ops.attention import triton_launch  # noqa: E402
from autodeploy.custom_ops.attention.triton_launch import (  # noqa: E402
    choose_decode_splits,
    triton_paged_attention,
)
from autodeploy.shim.capture_phase import active_capture_phase, capture_phase  # noqa: E402
from autodeploy.utils.errors import ConfigError  # noqa: E402

runs_kernels = pytest.mark.skipif(not KERNELS_RUN_HERE, reason="no GPU and no Triton interpreter")

H100_SMS = 132
CUDA = torch.device("cuda")  # only a device type here: nothing runs on it
MAX_SEQ_LEN = 96
PAGE_SIZE = 8
_real_decode_num_splits = triton_launch.decode_num_splits


def pretend_gpu(monkeypatch, multiprocessors: int) -> list[int]:
    """Split counts as on a GPU with that many SMs whatever the device (the kernels still run
    where the data is). Returns the list of key-range lengths the launcher sized splits for."""
    estimated_lengths: list[int] = []

    def on_gpu(num_decode: int, heads: int, est_kv_len: int, block_n: int, device) -> int:
        estimated_lengths.append(est_kv_len)
        return _real_decode_num_splits(num_decode, heads, est_kv_len, block_n, CUDA)

    monkeypatch.setattr(triton_launch, "_multiprocessor_count", lambda device: multiprocessors)
    monkeypatch.setattr(triton_launch, "decode_num_splits", on_gpu)
    return estimated_lengths


@pytest.fixture
def pretend_h100(monkeypatch) -> list[int]:
    return pretend_gpu(monkeypatch, H100_SMS)


@pytest.fixture
def max_splits(monkeypatch) -> list[int]:
    """A GPU so large that the split count is the key tiles of max_seq_len: the most splits,
    hence the most empty ones for short contexts."""
    return pretend_gpu(monkeypatch, 1 << 16)


def decode_block_n(dtype: torch.dtype, head_dim: int) -> int:
    block_d = max(16, triton_launch.next_power_of_2(head_dim))
    return triton_launch._decode_config(block_d, dtype, DEVICE == "cuda").block_n


def all_decode(case: Case, dtype: torch.dtype):
    """``make_batch`` with every sequence a decode row, the one at position 0 included (as the
    padding rows of a captured batch: one new token, nothing cached)."""
    q, k, v, cache, meta, sinks = make_batch(case, dtype, DEVICE)
    meta["batch_info_host"] = torch.tensor([0, 0, len(case.seqs)], dtype=torch.int32)
    return q, k, v, cache, meta, sinks


# ----------------------------------------------------------------------------------------------
# the split count
# ----------------------------------------------------------------------------------------------
def test_capture_phase_is_scoped_and_checked():
    assert active_capture_phase() is None
    with capture_phase(64) as outer:
        assert active_capture_phase() is outer and outer.max_kv_len == 64
        with pytest.raises(RuntimeError, match="capture failed"):
            with capture_phase(8):
                raise RuntimeError("capture failed")
        assert active_capture_phase() is outer  # the inner phase is gone, even after an error
    assert active_capture_phase() is None
    with pytest.raises(ConfigError, match="max_kv_len must be >= 1"):
        with capture_phase(0):
            pass


@pytest.mark.parametrize("num_decode", [1, 2, 8, 32])
def test_captured_split_count_is_the_one_of_max_seq_len(pretend_h100, num_decode):
    kv_heads, block_n = 8, 64
    capture_pages = num_decode  # a capture batch: one scratch page per padding row
    args = (num_decode, num_decode, kv_heads, capture_pages, PAGE_SIZE, block_n, CUDA)
    max_seq_len = 4096
    for_max = _real_decode_num_splits(num_decode, kv_heads, max_seq_len, block_n, CUDA)
    uncaptured = _real_decode_num_splits(num_decode, kv_heads, PAGE_SIZE, block_n, CUDA)

    assert choose_decode_splits(*args) == uncaptured == 1  # today's heuristic: one page
    with capture_phase(max_seq_len) as phase:
        assert choose_decode_splits(*args) == for_max
    assert phase.decode_splits == {for_max}
    assert choose_decode_splits(*args) == 1  # after the capture: the heuristic again
    # the count fills the GPU twice over, capped by the key tiles of the longest context
    expected = min(-(-2 * H100_SMS // (num_decode * kv_heads)), max_seq_len // block_n)
    assert for_max == min(expected, triton_launch.MAX_DECODE_SPLITS) and for_max > 1


def test_uncaptured_count_follows_cache_loc(pretend_h100):
    # 4 sequences holding 256 pages of 8 tokens -> 64 pages (512 keys) each -> 8 tiles of 64
    assert choose_decode_splits(4, 4, 8, 256, PAGE_SIZE, 64, CUDA) == 8
    assert pretend_h100 == [512]
    assert _real_decode_num_splits(4, 8, 512, 64, torch.device("cpu")) == 1  # the interpreter


# ----------------------------------------------------------------------------------------------
# the kernels with many, mostly empty splits
# ----------------------------------------------------------------------------------------------
def check_against_references(case: Case, dtype: torch.dtype, expected_splits: int) -> None:
    """Under the capture phase the op launches ``expected_splits`` splits; its output and cache
    equal the reference's and those of a 1-split launch."""
    q, k, v, cache, meta, sinks = all_decode(case, dtype)
    features = dict(
        scale=case.scale, sliding_window=case.sliding_window, logit_cap=case.logit_cap, sinks=sinks
    )
    ref_out, ref_cache = reference_attention(q, k, v, cache, meta, **features)
    single_cache = cache.clone()
    single = triton_paged_attention(q, k, v, *meta.values(), single_cache, **features, num_splits=1)

    split_cache = cache.clone()
    with capture_phase(MAX_SEQ_LEN) as phase:
        split = torch.ops.auto_deploy.triton_attention_with_cache(
            q, k, v, *meta.values(), split_cache, *features.values()
        )
    assert phase.decode_splits == {expected_splits}

    flat = split.reshape(ref_out.shape).float()
    torch.testing.assert_close(flat, ref_out.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(split.float(), single.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split_cache, ref_cache, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(split_cache, single_cache, atol=0, rtol=0, equal_nan=True)


@runs_kernels
def test_every_context_length_with_the_splits_of_max_seq_len(max_splits):
    """Contexts 1 .. MAX_SEQ_LEN in one decode batch: from a lone new token (every split but the
    first empty) through one key past a tile and a page, to the full length (no split empty)."""
    dtype = torch.float32
    case = Case(
        "all_lengths",
        [(pos, 1) for pos in range(MAX_SEQ_LEN)],  # context = pos + 1 keys
        page_size=PAGE_SIZE,
        num_heads=4,
        num_kv_heads=1,
        head_dim=16,
    )
    splits = -(-MAX_SEQ_LEN // decode_block_n(dtype, case.head_dim))
    assert splits >= 3  # 6 in the interpreter (16-key tiles)
    check_against_references(case, dtype, splits)


@runs_kernels
def test_short_contexts_with_many_splits_and_every_feature(max_splits):
    """Sinks (added in the reduce), a window and a logit cap with mostly empty splits."""
    dtype = torch.float32
    positions = [0, 1, 7, 8, 16, 17, 40, MAX_SEQ_LEN - 1]
    case = Case(
        "features",
        [(pos, 1) for pos in positions],
        page_size=PAGE_SIZE,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        sliding_window=20,
        logit_cap=5.0,
        with_sinks=True,
    )
    check_against_references(case, dtype, -(-MAX_SEQ_LEN // decode_block_n(dtype, 16)))
    assert max_splits == [MAX_SEQ_LEN]  # the launch above, sized for max_seq_len

    # the same batch uncaptured: sized from cache_loc's pages per sequence, as before
    q, k, v, cache, meta, sinks = all_decode(case, dtype)
    features = (case.scale, case.sliding_window, case.logit_cap, sinks)
    out = torch.ops.auto_deploy.triton_attention_with_cache(
        q, k, v, *meta.values(), cache.clone(), *features
    )
    pages_per_seq = len(meta["cache_loc"]) // len(positions)
    assert max_splits[1:] == [pages_per_seq * PAGE_SIZE] and max_splits[1] < MAX_SEQ_LEN
    ref_out, _ = reference_attention(q, k, v, cache, meta, *features)
    torch.testing.assert_close(out.reshape(ref_out.shape), ref_out, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# GPU: a real capture under the phase, replayed with other contexts
# ----------------------------------------------------------------------------------------------
def cuda_graph_of(fn):
    """Warm ``fn`` up and capture it on a side stream; returns (replay, static output)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # compiles the kernels outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = fn()
    torch.cuda.current_stream().wait_stream(stream)
    return graph.replay, output


@pytest.mark.gpu
def test_graph_captured_on_a_short_batch_replays_long_and_short_contexts():
    """Captured as the runner does (every row at position 0, under the phase), replayed with
    contexts from 1 key to max_seq_len keys: the count of max_seq_len, empty splits harmless."""
    max_seq_len, dtype, block_n = 4096, torch.bfloat16, 64
    positions = [0, 1, 63, 64, 65, 1000, 2049, max_seq_len - 1]
    case = Case(
        "llama8b_like",
        [(pos, 1) for pos in positions],
        page_size=64,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
    )
    q, k, v, cache, meta, _ = all_decode(case, dtype)
    ref_out, ref_cache = reference_attention(q, k, v, cache, meta, None, None, None, None)

    static_cache = cache.clone()
    static_meta = {**meta, "input_pos": torch.zeros_like(meta["input_pos"])}  # capture batch
    op = torch.ops.auto_deploy.triton_attention_with_cache
    with capture_phase(max_seq_len) as phase:
        replay, static_out = cuda_graph_of(
            lambda: op(q, k, v, *static_meta.values(), static_cache, None, None, None, None)
        )
    expected = triton_launch.decode_num_splits(len(positions), 8, max_seq_len, block_n, q.device)
    assert phase.decode_splits == {expected} and expected > 1

    static_cache.copy_(cache)  # the step to replay: real positions and cache
    static_meta["input_pos"].copy_(meta["input_pos"])
    replay()
    tol = 1.5e-2
    flat = static_out.reshape(ref_out.shape).float()
    torch.testing.assert_close(flat, ref_out.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(static_cache, ref_cache, atol=0, rtol=0, equal_nan=True)
