"""The ``flashinfer`` attention backend against the ``torch`` backend (the contract's reference).

CPU (no FlashInfer needed): registration and build-time errors, and all host-side logic -- the
plan inputs read from ``SequenceInfo``, the re-plan policy, the choice of static (CUDA-graph)
decode wrappers, the CUDA-graph guards, the op's split into prefill and decode parts, the
prepare-metadata op, the graph the transform builds. The kernels are ``TorchKernels``:
FlashInfer's documented paged-kernel semantics written in torch. They read the page table from
the wrappers' buffers *at run time*, as the CUDA kernels do, so a page table that was not
refreshed, or plan inputs computed wrongly, give wrong outputs here too.

GPU (``@pytest.mark.gpu``; skipped without CUDA or without the flashinfer package): the same
scenarios with FlashInfer's real kernels (bf16, fp16; head_dim 64 / 128 / 256; GQA on CUDA cores
and tensor cores; sliding window, soft-cap, custom scale), decode on static wrappers across page
boundaries, replay of a captured CUDA graph with the static buffers poisoned between steps, the
op without the host hook, and a two-layer model built by the pipeline.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import random
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from torch.export import Dim
from transforms.cached_model_helpers import CachedRunner, make_cm

from autodeploy.config import LlmArgs
from autodeploy.custom_ops.attention import flashinfer_backend as fib
from autodeploy.custom_ops.attention.descriptor import AttentionRegistry, UnsupportedAttentionError
from autodeploy.custom_ops.attention.flashinfer_planner import (
    LayerPlanConfig,
    PlanningError,
    StaticDecodeWrapper,
    step_inputs_from_info,
)
from autodeploy.custom_ops.attention.torch_cached_backend import torch_cached_attention
from autodeploy.export import torch_export_to_gm
from autodeploy.shim.sequence_info import SequenceInfo
from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import count_ops
from autodeploy.utils.errors import ConfigError

FLASHINFER_OP = torch.ops.auto_deploy.flashinfer_attention_with_cache
PREPARE_OP = torch.ops.auto_deploy.flashinfer_prepare_metadata
HAS_FLASHINFER = importlib.util.find_spec("flashinfer") is not None
needs_flashinfer = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_FLASHINFER),
    reason="needs a CUDA device and the flashinfer package",
)
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


# ----------------------------------------------------------------------------------------------
# FlashInfer's paged-kernel semantics in torch (the CPU stand-in for the CUDA kernels)
# ----------------------------------------------------------------------------------------------
class TorchPagedWrapper:
    """A prefill or decode wrapper: ``plan()`` stores (or, static, copies into the bound buffers)
    the page table; ``run()`` reads it back and attends, causal aligned to each row's end."""

    def __init__(self, kind: str, static: tuple[torch.Tensor, ...] | None = None):
        self.kind, self.static = kind, static
        self.num_plans = 0
        self.params: dict = {}

    def plan(self, **kwargs):
        if self.kind == "prefill":
            qo_indptr = kwargs.pop("qo_indptr")
            indptr, indices = kwargs.pop("paged_kv_indptr"), kwargs.pop("paged_kv_indices")
            last_page_len = kwargs.pop("paged_kv_last_page_len")
            assert kwargs.pop("causal") is True
            head_dim = kwargs.pop("head_dim_qk")
        else:
            indptr, indices = kwargs.pop("indptr"), kwargs.pop("indices")
            last_page_len = kwargs.pop("last_page_len")
            head_dim = kwargs.pop("head_dim")
            qo_indptr = torch.arange(len(last_page_len) + 1, dtype=torch.int32)
        # host-side arguments must be CPU int32 tensors, or FlashInfer's plan() syncs the GPU
        for t in (qo_indptr, indptr, last_page_len):
            assert t.device.type == "cpu" and t.dtype == torch.int32
        assert indices.dtype == torch.int32 and kwargs["q_data_type"] == kwargs["kv_data_type"]
        self.params = {**kwargs, "head_dim": head_dim}
        if self.static is not None:
            buf_indptr, buf_indices, buf_last = self.static
            assert len(last_page_len) == len(buf_last), "static wrappers have a fixed batch size"
            buf_indptr.copy_(indptr)
            buf_indices[: len(indices)].copy_(indices)
            buf_last.copy_(last_page_len)
            self._qo_indptr = qo_indptr
        else:
            self._tables = tuple(t.clone() for t in (qo_indptr, indptr, indices, last_page_len))
        self.num_plans += 1

    def run(self, q, kv_cache, out):
        if self.static is not None:
            qo_indptr, (indptr, indices, last_page_len) = self._qo_indptr, self.static
        else:
            qo_indptr, indptr, indices, last_page_len = self._tables
        qo, ptr, lens = qo_indptr.tolist(), indptr.tolist(), last_page_len.tolist()
        assert q.shape[0] == qo[-1] and out.shape == q.shape
        p = self.params
        num_heads, num_kv_heads, page_size = p["num_qo_heads"], p["num_kv_heads"], p["page_size"]
        assert kv_cache.shape[2:4] == (num_kv_heads, page_size) and q.shape[1] == num_heads
        for row in range(len(lens)):
            pages = indices[ptr[row] : ptr[row + 1]].long()
            kv_len = (len(pages) - 1) * page_size + lens[row]
            keys, values = (
                kv_cache[pages, half]
                .transpose(1, 2)
                .reshape(-1, num_kv_heads, p["head_dim"])[:kv_len]
                .float()
                .repeat_interleave(num_heads // num_kv_heads, dim=1)
                for half in (0, 1)
            )
            queries = q[qo[row] : qo[row + 1]].float()
            scores = torch.einsum("qhd,khd->hqk", queries, keys) * p["sm_scale"]
            if p["logits_soft_cap"] > 0:
                scores = p["logits_soft_cap"] * torch.tanh(scores / p["logits_soft_cap"])
            key_pos = torch.arange(kv_len)
            query_pos = torch.arange(kv_len - queries.shape[0], kv_len)
            visible = key_pos[None, :] <= query_pos[:, None]
            if p["window_left"] >= 0:
                visible &= key_pos[None, :] >= query_pos[:, None] - p["window_left"]
            probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
            out[qo[row] : qo[row + 1]] = torch.einsum("hqk,khd->qhd", probs, values).to(out.dtype)
        return out


class TorchKernels:
    """``WrapperFactory`` + append with FlashInfer's semantics, on the cache's device."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.made: list[tuple] = []

    def prefill(self):
        self.made.append(("prefill",))
        return TorchPagedWrapper("prefill")

    def decode(self, use_tensor_cores):
        self.made.append(("decode", use_tensor_cores))
        return TorchPagedWrapper("decode")

    def static_decode(self, batch_size, max_pages, use_tensor_cores):
        self.made.append(("static_decode", batch_size, max_pages, use_tensor_cores))
        int32 = {"dtype": torch.int32, "device": self.device}
        buffers = (
            torch.zeros(batch_size + 1, **int32),
            torch.zeros(max_pages, **int32),
            torch.ones(batch_size, **int32),
        )
        return StaticDecodeWrapper(TorchPagedWrapper("decode", buffers), *buffers)

    def append(
        self, k, v, batch_indices, positions, kv_cache, cache_loc, cu_num_pages, last_page_len
    ):
        assert len(cu_num_pages) == len(last_page_len) + 1
        page_size = kv_cache.shape[3]
        first_page = cu_num_pages.long()[batch_indices.long()]
        pos = positions.long()
        pages = cache_loc.long()[first_page + pos // page_size]
        kv_cache[pages, 0, :, pos % page_size] = k
        kv_cache[pages, 1, :, pos % page_size] = v


@pytest.fixture
def torch_kernels():
    """``TorchKernels`` as the backend's kernels for CPU tensors."""
    kernels = TorchKernels()
    previous = fib.install_kernels("cpu", kernels)
    yield kernels
    fib.install_kernels("cpu", previous)


# ----------------------------------------------------------------------------------------------
# scenarios: steps through SequenceInfo, every layer compared with the torch backend
# ----------------------------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    steps: list[list[tuple[int, int]]]  # per step: (sequence id, new tokens), prefill first
    page_size: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    layers: tuple[dict, ...] = ({},)  # per layer kind: scale / sliding_window / logit_cap
    padded_sizes: tuple[int, ...] = ()
    max_seq_len: int = 96


def decode_all(seqs: list[int], count: int) -> list[list[tuple[int, int]]]:
    return [[(s, 1) for s in seqs] for _ in range(count)]


CHUNKED_MIXED = [
    [(0, 6)],
    [(1, 7), (0, 1)],  # a new prompt joins a decoding sequence
    [(1, 8), (2, 2), (0, 1)],  # chunked-prefill continuation + a short prompt
    [(1, 4), (3, 1), (2, 1), (0, 1)],  # (3, 1): a one-token prompt is a prefill
    [(0, 1), (1, 1), (2, 1), (3, 1)],
]
PREFILL_DECODE = [[(0, 9), (1, 5), (2, 4)], *decode_all([0, 1, 2], 6)]
SCENARIOS = [
    Scenario("prefill_decode_gqa2", PREFILL_DECODE),
    Scenario("chunked_mixed_gqa4_tensor_cores", CHUNKED_MIXED, num_heads=8, num_kv_heads=2),
    Scenario(
        "mha_page_size_1",
        [[(0, 3), (1, 2)], *decode_all([0, 1], 3)],
        page_size=1,
        num_heads=2,
        num_kv_heads=2,
    ),
    Scenario(
        "two_layer_kinds_window_cap_scale",
        CHUNKED_MIXED,
        layers=({}, {"sliding_window": 5, "logit_cap": 3.0, "scale": 0.3}),
    ),
    Scenario(
        "padded_static_decode",
        [[(0, 7), (1, 2), (2, 3)], *decode_all([0, 1, 2], 9)],
        padded_sizes=(2, 4),
        layers=({}, {"sliding_window": 6}),
    ),
]


class PageAllocator:
    """Fills ``info`` step by step; pages are handed out shuffled (never contiguous), and
    ``on_new_page(page)`` runs for every page handed out."""

    def __init__(self, info: SequenceInfo, num_pages: int, seed: int = 0, on_new_page=None):
        self.info, self.rng, self.on_new_page = info, random.Random(seed), on_new_page
        self.free = list(range(1, num_pages))
        self.rng.shuffle(self.free)
        self.length: dict[int, int] = {}
        self.pages: dict[int, list[int]] = {}

    def nest(self, step: list[tuple[int, int]]) -> None:
        ids, pos, pages = [], [], []
        for seq, num_new in step:
            start = self.length.get(seq, 0)
            seq_pages = self.pages.setdefault(seq, [])
            while len(seq_pages) * self.info.page_size < start + num_new:
                seq_pages.append(self.free.pop())
                if self.on_new_page is not None:
                    self.on_new_page(seq_pages[-1])
            ids.append([self.rng.randrange(100) for _ in range(num_new)])
            pos.append(start)
            pages.append(list(seq_pages))
            self.length[seq] = start + num_new
        self.info.nest_sequences(ids, pos, pages)


def make_info(sc: Scenario, device, hook=True) -> tuple[SequenceInfo, int]:
    info = SequenceInfo(
        max_seq_len=sc.max_seq_len,
        max_batch_size=8,
        max_num_tokens=256,
        page_size=sc.page_size,
        device=device,
    )
    num_pages = 8 * math.ceil(sc.max_seq_len / sc.page_size) + 1
    info.set_num_pages(num_pages)
    if hook:
        info.register_host_prepare_hook(fib.flashinfer_host_prepare)
    info.set_padded_batch_sizes(list(sc.padded_sizes))
    return info, num_pages


def make_caches(sc: Scenario, num_pages: int, dtype, device, gen) -> torch.Tensor:
    """NaN in every page but the scratch page (a page-table bug reads NaN); ``fill_page`` puts
    large finite garbage into a page when it is handed out (read only by a masking bug)."""
    shape = (num_pages, 2, sc.num_kv_heads, sc.page_size, sc.head_dim)
    cache = torch.full(shape, float("nan"))
    cache[0] = torch.randn(shape[1:], generator=gen)
    return cache.to(dtype).to(device)


def fill_page(cache_pairs, page: int, gen) -> None:
    for fi_cache, ref_cache in cache_pairs:
        garbage = (torch.randn(fi_cache.shape[1:], generator=gen) * 10).to(fi_cache.dtype)
        fi_cache[page] = garbage.to(fi_cache.device)
        ref_cache[page] = garbage.to(ref_cache.device)


def metadata(info: SequenceInfo) -> list[torch.Tensor]:
    names = ("batch_info_host", "cu_seqlen", "input_pos", "cache_loc", "cu_num_pages")
    return [info.get_arg(name) for name in names]


def run_layers(info, layers, caches, sc: Scenario, dtype, gen):
    """One step of every layer through both backends; returns [(flashinfer out, torch out)]."""
    position_ids = info.get_arg("position_ids")
    b, s = position_ids.shape
    meta = metadata(info)
    prepared = PREPARE_OP(position_ids, meta[1], info.get_arg("last_page_len"))
    results = []
    for features, (fi_cache, ref_cache) in zip(layers, caches):
        q, k, v = (
            torch.randn(b, s, heads, sc.head_dim, generator=gen).to(dtype).to(info.device)
            for heads in (sc.num_heads, sc.num_kv_heads, sc.num_kv_heads)
        )
        args = (
            features.get("scale"),
            features.get("sliding_window"),
            features.get("logit_cap"),
            None,
        )
        out = FLASHINFER_OP(q, k, v, *meta, *prepared, fi_cache, *args)
        ref = torch_cached_attention(q, k, v, *meta, ref_cache, *args)
        results.append((out, ref))
    return results


def check_scenario(sc: Scenario, dtype, device, seed=0) -> SequenceInfo:
    gen = torch.Generator().manual_seed(seed)
    info, num_pages = make_info(sc, device)
    caches = []
    for _ in sc.layers:
        cache = make_caches(sc, num_pages, dtype, device, gen)
        caches.append((cache, cache.clone()))
    allocator = PageAllocator(
        info, num_pages, seed, on_new_page=lambda page: fill_page(caches, page, gen)
    )
    for index, step in enumerate(sc.steps):
        allocator.nest(step)
        for layer, (out, ref) in enumerate(run_layers(info, sc.layers, caches, sc, dtype, gen)):
            where = f"{sc.name} step {index} layer {layer}"
            assert out.shape == ref.shape and out.dtype == ref.dtype, where
            tol = TOLERANCE[dtype]
            torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol, msg=where)
    for fi_cache, ref_cache in caches:  # the append wrote exactly what the reference wrote
        torch.testing.assert_close(fi_cache, ref_cache, atol=0, rtol=0, equal_nan=True)
    return info


# ----------------------------------------------------------------------------------------------
# CPU: host logic with TorchKernels
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda sc: sc.name)
def test_scenarios_match_torch_backend_with_torch_kernels(sc, torch_kernels):
    check_scenario(sc, torch.bfloat16, "cpu")


def test_one_plan_per_layer_kind_and_step(torch_kernels):
    sc = SCENARIOS[3]  # two layer kinds; 5 steps, the first 4 with prefill rows
    info = check_scenario(sc, torch.bfloat16, "cpu")
    stats = fib.planner_for(info).stats
    assert stats["steps"] == 5 and fib.fallback_planner("cpu").stats["unplanned_calls"] == 0
    assert stats["prefill_plans"] == 2 * 4  # per kind and step, not per layer call
    assert stats["decode_plans"] == 2 * 4  # steps 1-4 have decode rows (eager: not padded)
    made = torch_kernels.made
    assert made.count(("prefill",)) == 2 and made.count(("decode", False)) == 2


def test_static_decode_replans_only_when_page_counts_change(torch_kernels):
    sc = SCENARIOS[4]  # page size 4; 3 sequences padded to 4 rows; two layer kinds
    stats = fib.planner_for(check_scenario(sc, torch.bfloat16, "cpu")).stats
    assert ("static_decode", 4, 4 * 24, False) in torch_kernels.made
    # 9 decode steps x 2 kinds; lengths 7/2/3 grow to 16/11/12: a plan whenever one of them
    # starts a new page (after positions 8, 12, 16 for seq 0, 4, 8 for seq 1, 4, 8, 12 for seq 2)
    page_count_changes = 0
    lengths = [7, 2, 3]
    previous = None
    for _ in range(9):
        lengths = [n + 1 for n in lengths]
        counts = tuple(math.ceil(n / 4) for n in lengths)
        page_count_changes += counts != previous
        previous = counts
    assert stats["decode_plans"] == 2 * page_count_changes
    assert stats["decode_refreshes"] == 2 * (9 - page_count_changes)
    assert stats["decode_refreshes"] > 0


def test_static_refresh_copies_new_page_ids_for_the_same_page_counts(torch_kernels):
    """Two decode steps whose rows have the same page counts but other pages (another batch):
    the second must not re-plan, and must still read its own pages."""
    sc = Scenario("swap", [], padded_sizes=(2,))
    gen = torch.Generator().manual_seed(3)
    info, num_pages = make_info(sc, "cpu")
    cache = make_caches(sc, num_pages, torch.bfloat16, "cpu", gen)
    cache[1:] = torch.randn(cache[1:].shape, generator=gen).to(cache.dtype)
    for pages in ([[5, 6], [7]], [[9, 10], [11]]):
        info.nest_sequences([[1], [2]], [5, 2], pages)
        ref_cache = cache.clone()
        [(out, ref)] = run_layers(info, [{}], [(cache, ref_cache)], sc, torch.bfloat16, gen)
        torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    stats = fib.planner_for(info).stats
    assert stats["decode_plans"] == 1 and stats["decode_refreshes"] == 1


def test_capture_batch_gets_a_static_wrapper_that_stays(torch_kernels):
    sc = Scenario("capture", [])
    info, num_pages = make_info(sc, "cpu")  # no padded sizes
    gen = torch.Generator().manual_seed(0)
    cache = make_caches(sc, num_pages, torch.bfloat16, "cpu", gen)
    PageAllocator(info, num_pages).nest([(0, 5), (1, 6), (2, 1)])
    run_layers(info, [{}], [(cache, cache.clone())], sc, torch.bfloat16, gen)
    info.set_generate_only_batch(3)  # what a CUDA-graph capture fills
    run_layers(info, [{}], [(cache, cache.clone())], sc, torch.bfloat16, gen)
    assert ("static_decode", 3, 3 * 24, False) in torch_kernels.made
    planner = fib.planner_for(info)
    config = planner.config_for(
        torch.empty(3, 4, 64, dtype=torch.bfloat16), cache, None, None, None
    )
    # a real decode batch of the captured size gets the static wrapper, which gets planned
    info.nest_sequences([[1], [2], [3]], [5, 6, 1], [[1, 2], [3, 4], [5]])
    assert planner.wrappers_for(config, *_planner_metadata(info)).decode_is_static
    info.nest_sequences([[1], [2]], [5, 6], [[1, 2], [3, 4]])  # never captured: eager
    planned = planner.wrappers_for(config, *_planner_metadata(info))
    assert planned.decode is not None and not planned.decode_is_static


def _planner_metadata(info):
    return (
        info.get_arg("batch_info_host"),
        info.get_arg("cu_seqlen"),
        info.get_arg("cu_num_pages"),
        info.get_arg("cache_loc"),
        info.get_arg("last_page_len"),
    )


def test_cuda_graph_guards(torch_kernels):
    sc = Scenario("guards", [], padded_sizes=(2,))
    info, num_pages = make_info(sc, "cpu")
    cache = torch.zeros(num_pages, 2, 2, 4, 64, dtype=torch.bfloat16)
    info.nest_sequences([[1, 2, 3]], [0], [[4]])
    planner = fib.planner_for(info)
    config = planner.config_for(
        torch.empty(1, 4, 64, dtype=torch.bfloat16), cache, None, None, None
    )
    with pytest.raises(PlanningError, match="first seen inside a CUDA-graph capture"):
        planner.wrappers_for(config, *_planner_metadata(info), capturing=True)
    planner.wrappers_for(config, *_planner_metadata(info))  # planned outside a capture
    with pytest.raises(PlanningError, match="only decode-only batches"):
        planner.wrappers_for(config, *_planner_metadata(info), capturing=True)
    info.nest_sequences([[1], [2]], [3, 3], [[4], [5]])  # padded size 2: static
    assert planner.wrappers_for(config, *_planner_metadata(info), capturing=True).decode
    info.set_padded_batch_sizes(None)
    info.nest_sequences([[1]], [3], [[4]])  # eager decode cannot be captured
    with pytest.raises(PlanningError, match="set_padded_batch_sizes"):
        planner.wrappers_for(config, *_planner_metadata(info), capturing=True)
    other, _ = make_info(sc, "cpu", hook=False)  # a batch the hook never saw
    other.nest_sequences([[1]], [3], [[4]])
    with pytest.raises(PlanningError, match="not planned by the host hook"):
        planner.wrappers_for(config, *_planner_metadata(other), capturing=True)


def check_without_hook(sc: Scenario, device, seed=1) -> SequenceInfo:
    """The scenario's steps with the op called on a SequenceInfo that has no host hook."""
    gen = torch.Generator().manual_seed(seed)
    info, num_pages = make_info(sc, device, hook=False)
    cache = make_caches(sc, num_pages, torch.bfloat16, device, gen)
    caches = [(cache, cache.clone())]
    allocator = PageAllocator(info, num_pages, on_new_page=lambda p: fill_page(caches, p, gen))
    for step in sc.steps:
        allocator.nest(step)
        [(out, ref)] = run_layers(info, [{}], caches, sc, torch.bfloat16, gen)
        torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    return info


def test_unplanned_batch_is_planned_from_the_ops_tensors(torch_kernels):
    """Without the host hook (or for another SequenceInfo) the op plans from its own metadata."""
    info = check_without_hook(SCENARIOS[1], "cpu")
    assert fib.fallback_planner("cpu").stats["unplanned_calls"] == len(SCENARIOS[1].steps)
    assert fib.planner_for(info) is None


def test_step_inputs_split_prefill_and_decode_rows():
    info = SequenceInfo(max_seq_len=32, max_batch_size=4, max_num_tokens=64, page_size=4)
    info.set_num_pages(20)
    # prefill of 5 at 0 (2 pages), continuation of 3 at 6 (3 pages), decodes at 9 and 3
    info.nest_sequences(
        [[1] * 5, [2] * 3, [3], [4]], [0, 6, 9, 3], [[11, 12], [13, 14, 15], [16, 17, 18], [19]]
    )
    step = step_inputs_from_info(info, decode_graph_rows=None)
    assert (step.num_prefill, step.num_prefill_tokens, step.num_decode) == (2, 8, 2)
    prefill = step.prefill_plan_args()
    assert prefill["qo_indptr"].tolist() == [0, 5, 8]
    assert prefill["paged_kv_indptr"].tolist() == [0, 2, 5]
    assert prefill["paged_kv_indices"].tolist() == [11, 12, 13, 14, 15]
    assert prefill["paged_kv_last_page_len"].tolist() == [1, 1]  # 5 = 4 + 1, 9 = 8 + 1
    decode = step.decode_plan_args()
    assert decode["indptr"].tolist() == [0, 3, 4]  # rebased to the decode rows' first page
    assert decode["indices"].tolist() == [16, 17, 18, 19]
    assert decode["last_page_len"].tolist() == [2, 4]  # 10 = 8 + 2, 4 = 0 + 4
    assert step.decode_page_counts == (3, 1)
    for t in (*prefill.values(), *decode.values()):
        assert t.dtype == torch.int32


def test_layer_plan_config_maps_contract_parameters():
    config = LayerPlanConfig.from_call(8, 64, 2, 16, torch.bfloat16, None, 5, 30.0)
    assert config.window_left == 4  # keys j > p - 5  <=>  j >= p - 4
    assert config.logits_soft_cap == 30.0 and config.sm_scale == pytest.approx(1 / 8)
    assert config.use_tensor_cores  # group of 4
    plain = LayerPlanConfig.from_call(4, 128, 2, 16, torch.float16, 0.25, None, None)
    assert (plain.window_left, plain.logits_soft_cap, plain.sm_scale) == (-1, 0.0, 0.25)
    assert not plain.use_tensor_cores
    assert plain.decode_plan_kwargs()["head_dim"] == 128
    assert plain.prefill_plan_kwargs()["causal"] is True


def test_prepare_metadata_gives_rows_and_positions():
    position_ids = torch.tensor([[0, 1, 2, 6, 7, 9]])
    cu_seqlen = torch.tensor([0, 3, 5, 6], dtype=torch.int32)
    last_page_len = torch.tensor([3, 4, 2], dtype=torch.int32)
    rows, positions, lens = PREPARE_OP(position_ids, cu_seqlen, last_page_len)
    assert rows.tolist() == [0, 0, 0, 1, 1, 2] and positions.tolist() == [0, 1, 2, 6, 7, 9]
    assert rows.dtype == positions.dtype == torch.int32 and lens.tolist() == [3, 4, 2]
    rows, positions, _ = PREPARE_OP(
        torch.tensor([[4], [8]]),
        cu_seqlen[:3] * 0 + torch.tensor([0, 1, 2], dtype=torch.int32),
        last_page_len[:2],
    )
    assert rows.tolist() == [0, 1] and positions.tolist() == [4, 8]


def test_op_rejects_unsupported_inputs(torch_kernels):
    info, num_pages = make_info(Scenario("x", []), "cpu")
    info.nest_sequences([[1, 2]], [0], [[1]])
    meta = metadata(info)
    prepared = PREPARE_OP(info.get_arg("position_ids"), meta[1], info.get_arg("last_page_len"))

    def call(dtype=torch.bfloat16, head_dim=64, cache_dtype=None, **kw):
        q = torch.zeros(1, 2, 4, head_dim, dtype=dtype)
        k = torch.zeros(1, 2, 2, head_dim, dtype=dtype)
        cache = torch.zeros(num_pages, 2, 2, 4, head_dim, dtype=cache_dtype or dtype)
        args = (kw.get("scale"), kw.get("sliding_window"), kw.get("logit_cap"), kw.get("sinks"))
        return FLASHINFER_OP(q, k, k, *meta, *prepared, cache, *args)

    for kwargs, message in [
        ({"dtype": torch.float32}, r"dtype torch.float32 \(supported: float16, bfloat16\)"),
        ({"head_dim": 32}, "head_dim=32 is not supported"),
        ({"cache_dtype": torch.float16}, "share one dtype"),
        ({"sinks": torch.zeros(4)}, "sinks are not supported"),
        ({"sliding_window": 0}, r"sliding_window=0 \(must be >= 1"),
        ({"logit_cap": -1.0}, r"logit_cap=-1.0 \(must be > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            call(**kwargs)


def test_op_on_cpu_without_torch_kernels_says_cuda_only():
    previous = fib.install_kernels("cpu", None)
    try:
        info, num_pages = make_info(Scenario("x", []), "cpu")
        info.nest_sequences([[1, 2]], [0], [[1]])  # the hook does nothing on CPU
        meta = metadata(info)
        prepared = PREPARE_OP(info.get_arg("position_ids"), meta[1], info.get_arg("last_page_len"))
        q = torch.zeros(1, 2, 4, 64, dtype=torch.bfloat16)
        cache = torch.zeros(num_pages, 2, 4, 4, 64, dtype=torch.bfloat16)
        with pytest.raises((ValueError, ConfigError), match="CUDA devices only|needs FlashInfer"):
            FLASHINFER_OP(q, q, q, *meta, *prepared, cache, None, None, None, None)
    finally:
        fib.install_kernels("cpu", previous)


# ----------------------------------------------------------------------------------------------
# CPU: the descriptor and the transform
# ----------------------------------------------------------------------------------------------
class TwoKindsModel(nn.Module):
    """Two attention layers calling ``torch_attention``: layer 0 plain GQA 2, layer 1 GQA 4 with
    sliding window and soft-cap (two FlashInfer layer kinds)."""

    def __init__(self, head_dim=64, vocab=64, hidden=64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.head_dim = head_dim
        self.kinds = [(4, 2, {}), (4, 1, {"sliding_window": 5, "logit_cap": 4.0})]
        self.embed = nn.Embedding(vocab, hidden)
        self.q = nn.ModuleList(nn.Linear(hidden, h * head_dim) for h, _, _ in self.kinds)
        self.kv = nn.ModuleList(nn.Linear(hidden, 2 * kv * head_dim) for _, kv, _ in self.kinds)
        self.o = nn.ModuleList(nn.Linear(h * head_dim, hidden) for h, _, _ in self.kinds)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, input_ids, position_ids):
        b, s = input_ids.shape
        x = self.embed(input_ids)
        x = x + (position_ids[..., None] * 0.01).to(x.dtype)
        for (heads, kv_heads, f), q_proj, kv_proj, o_proj in zip(
            self.kinds, self.q, self.kv, self.o
        ):
            q = q_proj(x).view(b, s, heads, self.head_dim)
            k, v = kv_proj(x).view(b, s, 2, kv_heads, self.head_dim).unbind(2)
            out = torch.ops.auto_deploy.torch_attention(
                q,
                k,
                v,
                None,
                0.0,
                True,
                None,
                None,
                f.get("sliding_window"),
                f.get("logit_cap"),
                "bsnd",
            )
            x = x + o_proj(out.reshape(b, s, heads * self.head_dim))
        return self.head(x)


def export_model(dtype=torch.bfloat16, device="cpu", **kwargs):
    model = TwoKindsModel(**kwargs).to(dtype=dtype, device=device).eval()
    inputs = {
        "input_ids": torch.randint(0, 64, (2, 4)),
        "position_ids": torch.arange(4).repeat(2, 1),
    }
    dims = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
    gm = torch_export_to_gm(model, inputs, {"input_ids": dims, "position_ids": dict(dims)})
    return model, gm


CACHE_STAGE = {
    "move_inputs_to_device": {"stage": "weight_load"},
    "insert_cached_attention": {"stage": "cache_init"},
    "initialize_cache": {"stage": "cache_init"},
}


def build_cached(gm, cm, backend):
    config = {k: dict(v) for k, v in CACHE_STAGE.items()}
    config["insert_cached_attention"]["backend"] = backend
    return InferenceOptimizer(None, config)(cm, gm)


@pytest.fixture
def flashinfer_installed(monkeypatch):
    """Build-time checks as on a machine with flashinfer (CPU runs use TorchKernels)."""
    monkeypatch.setattr(fib, "flashinfer_available", lambda: True)


@pytest.fixture(scope="module")
def exported_bf16():
    """(eager model, exported graph) of ``TwoKindsModel`` in bf16 on CPU; copy before building."""
    return export_model()


def attention_node(
    dtype=torch.bfloat16, head_dim=64, sinks=False, sliding_window=None, logit_cap=None
):
    """A ``torch_attention`` call in a hand-made graph, with shape metadata on its inputs."""
    graph = torch.fx.Graph()
    inputs = {}
    for name, heads in (("q", 4), ("k", 2), ("v", 2)):
        inputs[name] = graph.placeholder(name)
        inputs[name].meta["val"] = torch.empty(1, 3, heads, head_dim, dtype=dtype, device="meta")
    sinks_node = graph.placeholder("sinks") if sinks else None
    return graph.call_function(
        torch.ops.auto_deploy.torch_attention.default,
        (
            inputs["q"],
            inputs["k"],
            inputs["v"],
            None,
            0.0,
            True,
            None,
            sinks_node,
            sliding_window,
            logit_cap,
            "bsnd",
        ),
    )


def test_backend_is_registered_and_selectable():
    assert AttentionRegistry.get("flashinfer") is fib.FlashInferCachedAttention
    args = LlmArgs(attn_backend="flashinfer")
    assert args.transforms["insert_cached_attention"]["backend"] == "flashinfer"


def test_missing_flashinfer_is_a_config_error_at_build_time(monkeypatch, exported_bf16):
    monkeypatch.setattr(fib, "flashinfer_available", lambda: False)
    gm = copy.deepcopy(exported_bf16[1])
    with pytest.raises(ConfigError, match=r'pip install "autodeploy\[flashinfer\]"'):
        build_cached(gm, make_cm(), "flashinfer")
    assert count_ops(gm, FLASHINFER_OP) == 0  # the graph was not touched


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dtype": torch.float32}, "dtype torch.float32"),
        ({"head_dim": 32}, "head_dim=32 is not supported"),
        ({"sinks": True}, "attention sinks"),
        ({"sliding_window": 0}, "sliding_window=0"),
        ({"logit_cap": 0.0}, "logit_cap=0.0"),
    ],
    ids=["fp32", "head_dim_32", "sinks", "window_0", "cap_0"],
)
def test_check_supported_rejects_unsupported_features(flashinfer_installed, kwargs, message):
    backend = fib.FlashInferCachedAttention
    backend.check_supported(attention_node())  # the supported baseline passes
    with pytest.raises(UnsupportedAttentionError, match=message):
        backend.check_supported(attention_node(**kwargs))


def test_cache_dtype_other_than_the_models_is_rejected():
    config = make_cm(dtype="float16").kv_cache_config
    with pytest.raises(UnsupportedAttentionError, match="KV cache dtype"):
        fib.FlashInferCachedAttention.get_cache_initializers(attention_node(), config)
    [handler] = fib.FlashInferCachedAttention.get_cache_initializers(
        attention_node(), make_cm().kv_cache_config
    ).values()
    assert (handler.num_kv_heads, handler.head_dim, handler.dtype) == (2, 64, torch.bfloat16)


def run_model_pair(exported, device, schedule_steps, check, padded_sizes=()):
    """Build the flashinfer and the torch backend from one export; step both; compare."""
    runners = []
    for backend in ("flashinfer", "torch"):
        gm = copy.deepcopy(exported).to(device)
        cm = make_cm(
            page_size=4, max_seq_len=48, max_batch_size=4, max_num_tokens=64, device=device
        )
        gm = build_cached(gm, cm, backend)
        cm.info.set_padded_batch_sizes(list(padded_sizes))
        runners.append(CachedRunner(gm, cm))
    for schedule in schedule_steps:
        got, expected = (runner.step(schedule) for runner in runners)
        for seq, _ in schedule:
            check(got[seq].float(), expected[seq].float())
    return runners[0]


MODEL_STEPS = [
    [(0, [3, 1, 4, 1, 5, 9, 2]), (1, [2, 7, 1])],
    [(1, [8, 2, 8]), (0, [6])],
    *[[(0, [5 + i]), (1, [7 + i])] for i in range(5)],
]


def test_built_model_matches_torch_backend_with_torch_kernels(
    flashinfer_installed, torch_kernels, exported_bf16
):
    def check(got, expected):
        torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)

    runner = run_model_pair(exported_bf16[1], "cpu", MODEL_STEPS, check, padded_sizes=(4,))
    gm = runner.gm
    assert count_ops(gm, PREPARE_OP) == 1 and count_ops(gm, FLASHINFER_OP) == 2
    assert "last_page_len" in runner.cm.info.active_args
    stats = fib.planner_for(runner.cm.info).stats
    assert stats["decode_refreshes"] > 0
    assert fib.fallback_planner("cpu").stats["unplanned_calls"] == 0
    # two layer kinds: (GQA 2, plain) on CUDA cores, (GQA 4, window + cap) on tensor cores
    made = torch_kernels.made
    assert ("static_decode", 4, 48, False) in made and ("static_decode", 4, 48, True) in made


# ----------------------------------------------------------------------------------------------
# GPU: FlashInfer's kernels
# ----------------------------------------------------------------------------------------------
GPU_SCENARIOS = [
    Scenario("core_prefill_decode_gqa2_d128", PREFILL_DECODE, page_size=16, head_dim=128),
    Scenario(
        "core_chunked_mixed_gqa4_d128", CHUNKED_MIXED, num_heads=8, num_kv_heads=2, head_dim=128
    ),
    Scenario(
        "core_long_prompts_page_boundaries",
        [[(0, 70), (1, 33)], [(2, 64), (0, 1), (1, 1)], *decode_all([0, 1, 2], 4)],
        page_size=16,
        head_dim=128,
        max_seq_len=128,
    ),
    Scenario(
        "core_window_softcap_scale",
        CHUNKED_MIXED,
        head_dim=128,
        layers=({"sliding_window": 5, "logit_cap": 3.0, "scale": 0.2},),
    ),
    Scenario(
        "core_static_decode",
        [[(0, 7), (1, 2), (2, 3)], *decode_all([0, 1, 2], 9)],
        head_dim=128,
        padded_sizes=(2, 4),
        layers=({}, {"sliding_window": 6, "logit_cap": 3.0, "scale": 0.2}),
    ),
]
MATRIX = [  # other dtypes / head sizes (each compiles FlashInfer kernels of its own)
    (Scenario("matrix_fp16_d128", CHUNKED_MIXED, head_dim=128), torch.float16),
    (Scenario("matrix_bf16_d64", CHUNKED_MIXED, head_dim=64), torch.bfloat16),
    (
        Scenario("matrix_bf16_d256", CHUNKED_MIXED, num_heads=8, num_kv_heads=2, head_dim=256),
        torch.bfloat16,
    ),
]


@pytest.mark.gpu
@needs_flashinfer
@pytest.mark.parametrize("sc", GPU_SCENARIOS, ids=lambda sc: sc.name)
def test_gpu_scenarios_match_torch_backend(sc):
    check_scenario(sc, torch.bfloat16, "cuda")


@pytest.mark.gpu
@needs_flashinfer
@pytest.mark.parametrize("sc, dtype", MATRIX, ids=lambda x: getattr(x, "name", ""))
def test_gpu_matrix_matches_torch_backend(sc, dtype):
    check_scenario(sc, dtype, "cuda")


@pytest.mark.gpu
@needs_flashinfer
def test_gpu_core_static_decode_uses_the_fast_path():
    info = check_scenario(GPU_SCENARIOS[4], torch.bfloat16, "cuda")
    stats = fib.planner_for(info).stats
    assert stats["decode_refreshes"] > 0 and stats["decode_plans"] > 0


@pytest.mark.gpu
@needs_flashinfer
def test_gpu_core_op_without_host_hook_plans_from_its_tensors():
    check_without_hook(GPU_SCENARIOS[1], "cuda")


@pytest.mark.gpu
@needs_flashinfer
def test_gpu_core_cuda_graph_decode_replay_with_poisoned_static_buffers():
    """Capture one decode step of two layer kinds (CUDA-core and tensor-core decode) at a padded
    batch size of 4; replay it for real steps (3 sequences + 1 padding row, page boundaries
    crossed) with the static wrappers' buffers poisoned after every replay."""
    sc = Scenario(
        "graph", [], page_size=4, head_dim=128, layers=({}, {"sliding_window": 6, "logit_cap": 3.0})
    )
    kinds = [(4, 2), (8, 2)]  # (num_heads, num_kv_heads) of the two layers
    dtype, gen = torch.bfloat16, torch.Generator().manual_seed(5)
    info, num_pages = make_info(sc, "cuda")
    info.set_padded_batch_sizes([4])
    caches = []
    for _, kv_heads in kinds:
        cache = make_caches(
            Scenario("c", [], page_size=4, num_kv_heads=kv_heads, head_dim=128),
            num_pages,
            dtype,
            "cuda",
            gen,
        )
        caches.append((cache, cache.clone()))
    allocator = PageAllocator(info, num_pages, on_new_page=lambda p: fill_page(caches, p, gen))

    def rand_qkv(b, heads, kv_heads):
        return [
            torch.randn(b, 1, n, 128, generator=gen).to(dtype).cuda()
            for n in (heads, kv_heads, kv_heads)
        ]

    def layer_args(features):
        return (
            features.get("scale"),
            features.get("sliding_window"),
            features.get("logit_cap"),
            None,
        )

    # a prefill step (eager) so both layer kinds are known, then the capture batch
    allocator.nest([(0, 7), (1, 2), (2, 3)])
    meta = metadata(info)
    prepared = PREPARE_OP(info.get_arg("position_ids"), meta[1], info.get_arg("last_page_len"))
    for (heads, kv_heads), features, (fi_cache, ref_cache) in zip(kinds, sc.layers, caches):
        q, k, v = (x.view(1, -1, x.shape[2], 128) for x in rand_qkv(12, heads, kv_heads))
        FLASHINFER_OP(q, k, v, *meta, *prepared, fi_cache, *layer_args(features))
        torch_cached_attention(q, k, v, *meta, ref_cache, *layer_args(features))

    info.set_generate_only_batch(4)
    static_qkv = [rand_qkv(4, heads, kv_heads) for heads, kv_heads in kinds]
    position_ids, meta = info.get_arg("position_ids"), metadata(info)
    last_page_len = info.get_arg("last_page_len")

    def step():
        prepared = PREPARE_OP(position_ids, meta[1], last_page_len)
        return [
            FLASHINFER_OP(q, k, v, *meta, *prepared, fi_cache, *layer_args(f))
            for (q, k, v), f, (fi_cache, _) in zip(static_qkv, sc.layers, caches)
        ]

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up (writes only the scratch page)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()

    planner = fib.planner_for(info)
    statics = planner.static_wrappers()
    assert len(statics) == 2
    for _ in range(7):
        allocator.nest([(0, 1), (1, 1), (2, 1)])
        assert info.batch_size == 4 and info.num_sequences == 3
        meta_now = metadata(info)
        assert all(a.data_ptr() == b.data_ptr() for a, b in zip(meta_now[1:], meta[1:]))
        for (q, k, v), (heads, kv_heads) in zip(static_qkv, kinds):
            for buf, new in zip((q, k, v), rand_qkv(4, heads, kv_heads)):
                buf.copy_(new)
        graph.replay()
        for (q, k, v), f, out, (fi_cache, ref_cache) in zip(
            static_qkv, sc.layers, static_out, caches
        ):
            ref = torch_cached_attention(q, k, v, *meta_now, ref_cache, *layer_args(f))
            torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
            torch.testing.assert_close(fi_cache, ref_cache, atol=0, rtol=0, equal_nan=True)
        for static in statics:  # the next step's hook must rewrite all of them
            static.indptr.fill_(7)
            static.indices.fill_(num_pages - 1)
            static.last_page_len.fill_(3)
        for out in static_out:
            out.fill_(float("nan"))
    assert planner.stats["decode_refreshes"] > 0 and planner.stats["decode_plans"] > 2


@pytest.mark.gpu
@needs_flashinfer
def test_gpu_core_built_model_matches_torch_backend():
    def check(got, expected):
        error = (got - expected).norm() / expected.norm()
        assert error < 2e-2, f"relative error {error:.3g}"

    _, gm = export_model(device="cuda", head_dim=128)
    run_model_pair(gm, "cuda", MODEL_STEPS, check, padded_sizes=(2, 4))
