"""torch-cudagraph / torch-opt through compile_model on CPU: the CPU build is a reported problem
(strict: an error), and with a fake capture the whole path (options, capture, padding, replay,
fallback) runs on a real cached-attention graph."""

from __future__ import annotations

import copy

import pytest
import torch
from graph_fakes import FakeCapture
from transforms.cached_model_helpers import export_tiny, make_cm

from autodeploy.compile import CompileBackendRegistry
from autodeploy.compile.backends.cuda_graph_runner import CudaGraphRunner
from autodeploy.compile.backends.cuda_graph_stats import FallbackReason
from autodeploy.compile.backends.torch_cudagraph import TorchCudagraphBackend
from autodeploy.transforms import InferenceOptimizer
from autodeploy.utils.errors import BuildError

CACHE_STAGE = {
    "move_inputs_to_device": {"stage": "weight_load"},
    "insert_cached_attention": {"stage": "cache_init"},
    "initialize_cache": {"stage": "cache_init"},
}


@CompileBackendRegistry.register("_test-fake-cudagraph")
class FakeCudagraphBackend(TorchCudagraphBackend):
    """torch-cudagraph with the fake capture, allowed on CPU."""

    backend_name = "_test-fake-cudagraph"

    def check_device(self, device):
        pass

    def make_capture(self, device):
        return FakeCapture(self.cm.info)


@pytest.fixture(scope="module")
def exported():
    return export_tiny()[1]


def build(gm, cm, strict=False, cache_stage=True, **compile_options):
    config = {k: dict(v) for k, v in CACHE_STAGE.items()} if cache_stage else {}
    config["compile_model"] = {"stage": "compile", **compile_options}
    return InferenceOptimizer(None, config, strict=strict)(cm, gm)


@pytest.mark.parametrize("backend", ["torch-cudagraph", "torch-opt"])
def test_cuda_graph_backend_on_cpu_is_a_reported_problem(exported, backend):
    gm = copy.deepcopy(exported)
    cm = make_cm()
    built = build(gm, cm, cache_stage=False, backend=backend)
    assert built is gm  # runs as built (torch-simple)
    meta = gm.meta["_autodeploy"]
    assert meta["transform_history"]["compile_model"].skipped
    (problem,) = meta["problems"]
    assert problem.transform == "compile_model"
    for words in (backend, "runs on cpu", "'torch-compile'", "device='cuda'", "uncompiled"):
        assert words in problem.message
    assert cm.info.padded_batch_sizes == []

    with pytest.raises(BuildError, match=f"{backend}.*captures CUDA graphs.*runs on cpu"):
        build(copy.deepcopy(exported), make_cm(), strict=True, cache_stage=False, backend=backend)


def _allocate(free, count):
    return [free.pop() for _ in range(count)]


def test_compile_model_captures_pads_replays_and_falls_back(exported):
    gm = copy.deepcopy(exported)
    cm = make_cm(page_size=16, max_seq_len=32, max_batch_size=6, max_num_tokens=64)
    runner = build(
        gm,
        cm,
        backend="_test-fake-cudagraph",
        cuda_graph_warmup_runs=1,
        cuda_graph_batch_sizes=[4, 2, 1],
    )
    assert isinstance(runner, CudaGraphRunner) and runner.model is gm
    assert runner.stats.captured_batch_sizes == (1, 2, 4)
    assert cm.info.padded_batch_sizes == [1, 2, 4]

    # prefill 3 sequences, then decode them (one page each: the fake replay re-reads the
    # capture-time views, which is exact while cache_loc keeps its captured length)
    free = list(range(1, cm.num_pages))
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10], [11, 12]]
    pages = [_allocate(free, 1) for _ in prompts]
    cm.info.nest_sequences(prompts, [0, 0, 0], pages)
    with torch.inference_mode():
        runner(**cm.named_args)
        lengths = [len(p) for p in prompts]
        for step in range(4):
            cm.info.nest_sequences([[20 + step + i] for i in range(3)], lengths, pages)
            assert cm.info.batch_size == 4  # padded
            expected = cm.info.gather_last_logits(gm(**cm.named_args)).clone()
            for graph in runner.graphs.values():
                graph.output.fill_(float("nan"))
            got = cm.info.gather_last_logits(runner(**cm.named_args))
            torch.testing.assert_close(got, expected)
            lengths = [n + 1 for n in lengths]
        # five decode rows: more than the largest captured size
        more = [_allocate(free, 1) for _ in range(2)]
        cm.info.nest_sequences([[1]] * 5, [*lengths, 1, 1], pages + more)
        got = cm.info.gather_last_logits(runner(**cm.named_args))
        assert got.shape == (5, 32)
    assert runner.stats.replays == {4: 4}
    assert runner.stats.fallbacks == {FallbackReason.PREFILL: 1, FallbackReason.TOO_LARGE: 1}


def test_default_sizes_come_from_max_batch_size(exported):
    gm = copy.deepcopy(exported)
    cm = make_cm(page_size=16, max_seq_len=32, max_batch_size=6, max_num_tokens=64)
    runner = build(gm, cm, backend="_test-fake-cudagraph", cuda_graph_warmup_runs=1)
    assert runner.stats.captured_batch_sizes == (1, 2, 4, 6)


@CompileBackendRegistry.register("_test-failing-cudagraph")
class FailingCudagraphBackend(FakeCudagraphBackend):
    """The capture of batch size 2 fails as a host sync inside a real capture would."""

    backend_name = "_test-failing-cudagraph"

    def make_capture(self, device):
        return FakeCapture(self.cm.info, fail_at=2)


def test_a_failed_capture_is_a_reported_problem(exported):
    gm = copy.deepcopy(exported)
    cm = make_cm(page_size=16, max_seq_len=32, max_batch_size=4, max_num_tokens=64)
    built = build(gm, cm, backend="_test-failing-cudagraph")
    assert built is gm and cm.info.padded_batch_sizes == []
    (problem,) = gm.meta["_autodeploy"]["problems"]
    assert "capturing the decode step failed (RuntimeError: operation not permitted" in (
        problem.message
    )
    assert "attn_backend 'triton' or 'flashinfer'" in problem.message
    cm.info.nest_sequences([[1, 2, 3]], [0], [[1]])  # the uncaptured model still runs
    assert gm(**cm.named_args).shape == (1, 3, 32)
