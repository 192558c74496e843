"""CudaGraphRunner bookkeeping on CPU with a fake capture: batch-size buckets, capture order,
padding and slicing, and counted fallbacks (prefill, too large, moved or changed inputs)."""

from __future__ import annotations

import logging

import pytest
import torch
from graph_fakes import VOCAB, FakeCapture, ToyInterface, ToyModel

from autodeploy.compile.backends.cuda_graph_runner import CudaGraphRunner
from autodeploy.compile.backends.cuda_graph_stats import FallbackReason
from autodeploy.compile.backends.torch_cudagraph import (
    batch_size_limit,
    default_batch_sizes,
    resolve_batch_sizes,
)
from autodeploy.compile.registry import CompileBackendUnavailableError
from autodeploy.shim.capture_phase import active_capture_phase
from autodeploy.utils.errors import ConfigError


def make_runner(sizes=(1, 2, 4, 6), max_batch_size=8, warmups=2, **kwargs):
    cm = ToyInterface(max_batch_size=max_batch_size, **kwargs)
    model = ToyModel().eval()
    capture = FakeCapture(cm.info)
    runner = CudaGraphRunner(model, cm, capture, num_warmup_runs=warmups)
    runner.capture(sizes)
    return cm, model, capture, runner


def expected_logits(model, cm, ids, positions):
    """The toy model on the real rows only (no padding, no graphs): [B, vocab]."""
    with torch.no_grad():
        out = model(torch.tensor(ids), torch.tensor(positions)[:, None], cm.caches["bias_cache"])
    return out[:, -1]


# ------------------------------------------------------------------------------ bucket policy
def test_default_sizes_are_powers_of_two_up_to_the_limit():
    assert default_batch_sizes(1) == [1]
    assert default_batch_sizes(8) == [1, 2, 4, 8]
    assert default_batch_sizes(12) == [1, 2, 4, 8, 12]
    assert default_batch_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert resolve_batch_sizes(None, 3) == [1, 2, 3]


def test_custom_sizes_are_sorted_and_capped_at_the_limit():
    assert resolve_batch_sizes([8, 1, 4, 4], 16) == [1, 4, 8]
    # sizes that can never occur are replaced by the limit, which still covers their batches
    assert resolve_batch_sizes([1, 2, 32, 64], 16) == [1, 2, 16]
    with pytest.raises(ConfigError, match=">= 1"):
        resolve_batch_sizes([0, 2], 16)
    with pytest.raises(ConfigError, match="at least one size"):
        resolve_batch_sizes([], 16)


def test_limit_is_the_smaller_of_batch_and_token_limits():
    cm = ToyInterface(max_batch_size=8)
    assert batch_size_limit(cm.info) == 8
    cm.info.max_num_tokens = 5  # a step of 5 tokens holds at most 5 decode rows
    assert batch_size_limit(cm.info) == 5


# ------------------------------------------------------------------------------ capture
def test_capture_runs_largest_first_with_warmups_hooks_and_one_pool():
    cm = ToyInterface()
    hook_sizes = []
    cm.info.register_host_prepare_hook(lambda info: hook_sizes.append(info.batch_size))
    capture = FakeCapture(cm.info)
    runner = CudaGraphRunner(ToyModel(), cm, capture, num_warmup_runs=2)
    runner.capture([4, 1, 8, 2, 4])
    captured = [size for kind, size in capture.events if kind == "capture"]
    assert captured == [8, 4, 2, 1]
    for size in captured:  # two warm-ups of the same batch right before each capture
        at = capture.events.index(("capture", size))
        assert capture.events[at - 2 : at] == [("warm_up", size)] * 2
    assert len(capture.pools) == 1
    # the host prepare hooks ran for every capture batch (outside the capture)
    assert [s for s in hook_sizes if s in (8, 4, 2, 1)][:4] == [8, 4, 2, 1]
    assert cm.info.padded_batch_sizes == [1, 2, 4, 8]
    assert runner.stats.captured_batch_sizes == (1, 2, 4, 8)
    assert sorted(runner.graphs) == [1, 2, 4, 8]
    assert not cm.info.is_decode_only  # a neutral example batch is left behind


def test_a_failed_capture_keeps_nothing():
    cm = ToyInterface()
    capture = FakeCapture(cm.info, fail_at=2)
    runner = CudaGraphRunner(ToyModel(), cm, capture, num_warmup_runs=0)
    with pytest.raises(RuntimeError, match="capturing"):
        runner.capture([1, 2, 4])
    assert runner.graphs == {} and cm.info.padded_batch_sizes == []


def test_host_inputs_other_than_batch_info_are_refused():
    cm = ToyInterface(args=("batch_info_host", "seq_len_host", "cu_seqlen"))
    runner = CudaGraphRunner(ToyModel(), cm, FakeCapture(cm.info), num_warmup_runs=0)
    with pytest.raises(CompileBackendUnavailableError, match="seq_len_host") as info:
        runner.capture([1, 2])
    assert "batch_info_host" not in str(info.value).split("host input(s)")[1].split(";")[0]
    assert runner.graphs == {} and cm.info.padded_batch_sizes == []


def test_an_unused_host_input_of_a_graph_module_is_allowed():
    cm = ToyInterface(args=("seq_len_host",))
    gm = torch.fx.symbolic_trace(ToyModel())  # **metadata: seq_len_host has no users
    runner = CudaGraphRunner(gm, cm, FakeCapture(cm.info), num_warmup_runs=0)
    runner.capture([1, 2])
    assert sorted(runner.graphs) == [1, 2]


class PhaseProbe(ToyModel):
    """Notes the capture phase of each call and, as the Triton launcher does, a split count."""

    def __init__(self):
        super().__init__()
        self.phases: list[int | None] = []

    def forward(self, input_ids, *args, **kwargs):
        phase = active_capture_phase()
        self.phases.append(None if phase is None else phase.max_kv_len)
        if phase is not None:
            phase.decode_splits.add(input_ids.shape[0] + 1)  # some count per batch size
        return super().forward(input_ids, *args, **kwargs)


def test_warm_ups_and_capture_run_in_a_capture_phase_of_max_seq_len(ad_logs):
    cm = ToyInterface()
    model = PhaseProbe()
    runner = CudaGraphRunner(model, cm, FakeCapture(cm.info), num_warmup_runs=2)
    runner.capture([1, 4])
    assert model.phases == [cm.info.max_seq_len] * 6  # 2 warm-ups + 1 capture, per size
    assert active_capture_phase() is None  # nothing outlives the capture
    assert runner.stats.decode_splits == {4: (5,), 1: (2,)}
    assert runner.stats.as_dict()["decode_splits_by_batch_size"] == {"1": [2], "4": [5]}
    debug = [r.getMessage() for r in ad_logs.records if r.levelno == logging.DEBUG]
    assert any(
        "batch size 4 (decode key-range splits [5], sized for max_seq_len 64)" in m for m in debug
    )
    model.phases.clear()
    cm.decode_step(3)
    runner(**cm.named_args)  # a replay (the fake re-runs the model) and an uncaptured run
    runner.model(**cm.named_args)
    assert runner.stats.replays == {4: 1} and model.phases == [None, None]


def test_a_failed_capture_leaves_no_phase_and_no_split_counts():
    cm = ToyInterface()
    runner = CudaGraphRunner(PhaseProbe(), cm, FakeCapture(cm.info, fail_at=2), num_warmup_runs=1)
    with pytest.raises(RuntimeError, match="capturing"):
        runner.capture([1, 2, 4])
    assert active_capture_phase() is None and runner.stats.decode_splits == {}


# ------------------------------------------------------------------------------ replay
def test_decode_batches_pad_replay_and_slice_back():
    cm, model, _, runner = make_runner(
        sizes=(1, 2, 4, 6), args=("cu_seqlen", "cache_loc", "cu_num_pages", "input_pos")
    )
    hook_rows = []  # host prepare hooks (FlashInfer plan) see the padded batch
    cm.info.register_host_prepare_hook(lambda info: hook_rows.append(info.batch_size))
    padded_to = {1: 1, 2: 2, 3: 4, 4: 4, 5: 6, 6: 6}
    for batch, size in padded_to.items():
        for step in range(2):
            ids, positions = cm.decode_step(batch, step)
            assert cm.info.batch_size == size and cm.info.num_sequences == batch
            assert hook_rows[-1] == size
            with torch.inference_mode():  # stale outputs must not leak through
                for graph in runner.graphs.values():
                    graph.output.fill_(float("nan"))
            out = runner(**cm.named_args)
            assert out is runner.graphs[size].output and out.shape == (size, 1, VOCAB)
            got = cm.info.gather_last_logits(out)
            torch.testing.assert_close(got, expected_logits(model, cm, ids, positions))
    assert runner.stats.fallbacks == {}
    assert dict(runner.stats.replays) == {1: 2, 2: 2, 4: 4, 6: 4}


def test_batches_above_the_largest_size_and_prefill_run_uncaptured(ad_logs):
    cm, model, _, runner = make_runner(sizes=(1, 2, 4, 6), max_batch_size=8)
    for batch in (7, 8):
        ids, positions = cm.decode_step(batch)
        assert cm.info.batch_size == batch  # not padded: no captured size fits
        out = runner(**cm.named_args)
        assert all(out is not g.output for g in runner.graphs.values())
        got = cm.info.gather_last_logits(out)
        torch.testing.assert_close(got, expected_logits(model, cm, ids, positions))
    # a prefill and a mixed batch (prefill first, then one decode row)
    cm.info.nest_sequences([[1, 2, 3]], [0], [[5]])
    runner(**cm.named_args)
    cm.info.nest_sequences([[1, 2], [4]], [0, 7], [[5], [6, 7]])
    out = runner(**cm.named_args)
    assert out.shape == (1, 3, VOCAB)
    stats = runner.stats
    assert stats.fallbacks == {FallbackReason.TOO_LARGE: 2, FallbackReason.PREFILL: 2}
    assert stats.num_replays == 0 and stats.num_fallbacks == 4
    debug = [r.getMessage() for r in ad_logs.records if r.levelno == logging.DEBUG]
    assert sum("CUDA graph not used (prefill)" in m for m in debug) == 2
    assert sum("CUDA graph not used (batch_too_large)" in m for m in debug) == 2
    assert not [r for r in ad_logs.records if r.levelno >= logging.WARNING]


def test_a_moved_cache_is_a_counted_fallback_with_a_warning(ad_logs):
    cm, model, _, runner = make_runner()
    cm.caches["bias_cache"] = cm.caches["bias_cache"] + 1.0  # re-allocated: new address
    for step in range(2):
        ids, positions = cm.decode_step(3, step)
        got = cm.info.gather_last_logits(runner(**cm.named_args))
        torch.testing.assert_close(got, expected_logits(model, cm, ids, positions))
    assert runner.stats.fallbacks == {FallbackReason.ADDRESS_CHANGED: 2}
    warnings = [r.getMessage() for r in ad_logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "address_changed" in warnings[0]  # once, then DEBUG
    assert "re-allocated" in warnings[0]


def test_changed_arguments_are_counted_fallbacks():
    cm, model, _, runner = make_runner()
    cm.decode_step(4)
    kwargs = cm.named_args
    missing = {k: v for k, v in kwargs.items() if k != "cu_seqlen"}
    cases = [
        (FallbackReason.SHAPE_CHANGED, {**kwargs, "input_ids": kwargs["input_ids"].view(1, 4)}),
        (FallbackReason.ADDRESS_CHANGED, {**kwargs, "position_ids": kwargs["position_ids"] + 0}),
        (FallbackReason.ARGS_CHANGED, {**kwargs, "extra": torch.zeros(1)}),
        (FallbackReason.ARGS_CHANGED, missing),
    ]
    with torch.no_grad():
        for count, (reason, call) in enumerate(cases):
            torch.testing.assert_close(runner(**call), model(**call))  # ran uncaptured
            assert runner.stats.fallbacks[reason] == 1 + (count == 3)
        runner(kwargs["input_ids"], kwargs["position_ids"], kwargs["bias_cache"])  # positional
        assert runner.stats.fallbacks[FallbackReason.ARGS_CHANGED] == 3
        # padding turned off by someone else: 3 rows, no graph of 3
        cm.info.set_padded_batch_sizes(None)
        cm.decode_step(3)
        runner(**cm.named_args)
        assert runner.stats.fallbacks[FallbackReason.NOT_CAPTURED] == 1
        # the arguments of the interface still replay
        cm.info.set_padded_batch_sizes([1, 2, 4, 6])
        cm.decode_step(4)
        torch.testing.assert_close(runner(**cm.named_args), model(**cm.named_args))
    assert runner.stats.replays == {4: 1}


def test_stats_report_and_reset():
    cm, _, _, runner = make_runner(sizes=(2,), max_batch_size=4)
    cm.decode_step(1)
    runner(**cm.named_args)
    cm.decode_step(3)
    runner(**cm.named_args)
    report = runner.cuda_graph_stats.as_dict()
    assert report["captured_batch_sizes"] == [2]
    assert report["replays"] == 1 and report["replays_by_batch_size"] == {"2": 1}
    assert report["fallbacks"] == 1 and report["fallbacks_by_reason"] == {"batch_too_large": 1}
    runner.stats.reset()
    assert runner.stats.num_replays == runner.stats.num_fallbacks == 0
    assert runner.stats.captured_batch_sizes == (2,)
