"""Triton paged attention (``auto_deploy::triton_attention_with_cache``) against references.

Every case builds a packed batch (prefill sequences first, then decode), a paged KV cache whose
pages are shuffled (page 0, unused pages and the unwritten tail of each last page hold NaN, so
a masking bug reads NaN and fails loudly), runs the Triton op and compares the output and the
cache with (a) the straightforward reference below and (b) the ``torch`` backend's
``torch_cached_attention``.

CPU: the kernels run in the Triton interpreter (``TRITON_INTERPRET=1``, set by tests/conftest.py;
read per launch, so it does not matter when triton was imported).
GPU (``@pytest.mark.gpu``): the same cases plus realistic shapes, bf16 and CUDA-graph capture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

pytest.importorskip("triton")

from autodeploy.custom_ops.attention.descriptor import (  # noqa: E402
    AttentionRegistry,
    UnsupportedAttentionError,
)
from autodeploy.custom_ops.attention.torch_cached_backend import (  # noqa: E402, F401
    torch_cached_attention,
)
from autodeploy.custom_ops.attention.triton_launch import (  # noqa: E402
    cpu_interpreter_problem,
    triton_paged_attention,
)

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
KERNELS_RUN_HERE = ON_GPU or cpu_interpreter_problem() is None

runs_kernels = pytest.mark.skipif(
    not KERNELS_RUN_HERE, reason=f"no GPU and no Triton interpreter: {cpu_interpreter_problem()}"
)
TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


# ----------------------------------------------------------------------------------------------
# batch construction and the reference
# ----------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    seqs: list[tuple[int, int]]  # (input_pos, num_new_tokens) per sequence, prefill first
    page_size: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    scale: float | None = None
    sliding_window: int | None = None
    logit_cap: float | None = None
    with_sinks: bool = False
    num_splits: int | None = None  # decode split override (None: the op's heuristic)
    padding_tokens: int = 0  # extra q rows past the last sequence (must come back as zeros)
    extra: dict = field(default_factory=dict)


def make_batch(case: Case, dtype: torch.dtype, device: str, seed: int = 0):
    """Random q/k/v, metadata and a NaN-poisoned paged cache for ``case``."""
    gen = torch.Generator().manual_seed(seed)
    ps = case.page_size
    pages_per_seq = [math.ceil((pos + n) / ps) for pos, n in case.seqs]
    num_pages = sum(pages_per_seq) + 3  # + scratch page 0 + two never-used pages
    page_ids = (torch.randperm(num_pages - 1, generator=gen) + 1).tolist()

    shape = (num_pages, 2, case.num_kv_heads, ps, case.head_dim)
    cache = torch.full(shape, float("nan"))
    cache_loc, cu_num_pages, cu_seqlen = [], [0], [0]
    for (pos, n), count in zip(case.seqs, pages_per_seq):
        pages = page_ids[:count]
        page_ids = page_ids[count:]
        history = torch.arange(pos)  # positions already cached: random keys/values
        cache[torch.tensor(pages)[history // ps], :, :, history % ps] = torch.randn(
            pos, 2, case.num_kv_heads, case.head_dim, generator=gen
        )
        cache_loc += pages
        cu_num_pages.append(len(cache_loc))
        cu_seqlen.append(cu_seqlen[-1] + n)

    num_tokens = cu_seqlen[-1] + case.padding_tokens
    is_decode = [n == 1 and pos > 0 for pos, n in case.seqs]
    num_decode = sum(is_decode)
    assert is_decode == sorted(is_decode), "prefill sequences must come first"
    num_prefill = len(case.seqs) - num_decode

    def rand(heads):
        x = torch.randn(num_tokens, heads, case.head_dim, generator=gen)
        return (x.view(num_tokens, 1, heads, -1) if num_prefill == 0 else x[None]).to(dtype)

    q, k, v = rand(case.num_heads), rand(case.num_kv_heads), rand(case.num_kv_heads)
    int32 = dict(dtype=torch.int32, device=device)
    meta = dict(
        batch_info_host=torch.tensor(
            [num_prefill, cu_seqlen[num_prefill], num_decode], dtype=torch.int32
        ),
        cu_seqlen=torch.tensor(cu_seqlen, **int32),
        input_pos=torch.tensor([pos for pos, _ in case.seqs], **int32),
        cache_loc=torch.tensor(cache_loc, **int32),
        cu_num_pages=torch.tensor(cu_num_pages, **int32),
    )
    sinks = torch.randn(case.num_heads, generator=gen).to(device) if case.with_sinks else None
    return q.to(device), k.to(device), v.to(device), cache.to(dtype).to(device), meta, sinks


def reference_attention(q, k, v, kv_cache, meta, scale, sliding_window, logit_cap, sinks):
    """Write the new k/v into the pages, gather each sequence's keys, causal softmax in fp32."""
    kv_cache = kv_cache.clone()
    num_heads, head_dim = q.shape[-2:]
    num_kv_heads, page_size = kv_cache.shape[2], kv_cache.shape[3]
    q, k, v = (x.reshape(-1, x.shape[-2], head_dim) for x in (q, k, v))
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.zeros_like(q)
    cu, input_pos, cache_loc, cu_pages = (
        meta[n].tolist() for n in ("cu_seqlen", "input_pos", "cache_loc", "cu_num_pages")
    )
    for i, pos0 in enumerate(input_pos):
        pages = torch.tensor(cache_loc[cu_pages[i] : cu_pages[i + 1]], device=q.device)
        num_new = cu[i + 1] - cu[i]
        new_pos = torch.arange(pos0, pos0 + num_new, device=q.device)
        new_page, new_row = pages[new_pos // page_size], new_pos % page_size
        kv_cache[new_page, 0, :, new_row] = k[cu[i] : cu[i + 1]].to(kv_cache.dtype)
        kv_cache[new_page, 1, :, new_row] = v[cu[i] : cu[i + 1]].to(kv_cache.dtype)
        kv_len = pos0 + num_new
        all_pos = torch.arange(kv_len, device=q.device)
        page, row = pages[all_pos // page_size], all_pos % page_size
        keys = kv_cache[page, 0, :, row].float()  # [L, n_kv, d]
        values = kv_cache[page, 1, :, row].float()
        keys = keys.repeat_interleave(num_heads // num_kv_heads, dim=1)  # [L, n, d]
        values = values.repeat_interleave(num_heads // num_kv_heads, dim=1)
        for t in range(num_new):
            p = pos0 + t
            scores = torch.einsum("hd,jhd->hj", q[cu[i] + t].float(), keys) * scale
            if logit_cap is not None:
                scores = logit_cap * torch.tanh(scores / logit_cap)
            j = torch.arange(kv_len, device=q.device)
            visible = j <= p
            if sliding_window is not None:
                visible &= j > p - sliding_window
            scores = scores.masked_fill(~visible, float("-inf"))
            if sinks is not None:
                scores = torch.cat([scores, sinks.float()[:, None]], dim=1)
            probs = torch.softmax(scores, dim=-1)[:, :kv_len]
            out[cu[i] + t] = torch.einsum("hj,jhd->hd", probs, values).to(q.dtype)
    return out, kv_cache


def check_case(case: Case, dtype: torch.dtype, device: str = DEVICE, seed: int = 0) -> None:
    q, k, v, cache, meta, sinks = make_batch(case, dtype, device, seed)
    args = dict(
        scale=case.scale, sliding_window=case.sliding_window, logit_cap=case.logit_cap, sinks=sinks
    )
    ref_out, ref_cache = reference_attention(q, k, v, cache, meta, **args)

    triton_cache = cache.clone()
    if case.num_splits is None:
        out = torch.ops.auto_deploy.triton_attention_with_cache(
            q, k, v, *meta.values(), triton_cache, *args.values()
        )
    else:
        out = triton_paged_attention(
            q, k, v, *meta.values(), triton_cache, **args, num_splits=case.num_splits
        )
    torch_cache = cache.clone()
    torch_out = torch.ops.auto_deploy.torch_cached_attention(
        q, k, v, *meta.values(), torch_cache, *args.values()
    )

    assert out.shape == q.shape and out.dtype == q.dtype
    tol = TOLERANCE[dtype]
    flat = out.reshape(ref_out.shape)
    torch.testing.assert_close(flat.float(), ref_out.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(out.float(), torch_out.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(triton_cache, ref_cache, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(triton_cache, torch_cache, atol=0, rtol=0, equal_nan=True)
    if case.padding_tokens:
        assert torch.all(flat[-case.padding_tokens :] == 0)


# ----------------------------------------------------------------------------------------------
# tiny cases (interpreter on CPU; also run on a GPU)
# ----------------------------------------------------------------------------------------------
MIXED = [(0, 7), (6, 5), (9, 1), (20, 1)]  # first prefill, continuation, two decodes
TINY_CASES = [
    Case(
        "prefill_only_mha_d16",
        [(0, 40), (0, 5)],
        page_size=4,
        num_heads=2,
        num_kv_heads=2,
        head_dim=16,
    ),
    Case("decode_only_gqa2_padded", [(5, 1), (12, 1), (30, 1)], page_size=8, padding_tokens=1),
    Case(
        "decode_split3_gqa4",
        [(5, 1), (12, 1), (30, 1)],
        page_size=8,
        num_heads=8,
        num_kv_heads=2,
        num_splits=3,
    ),
    Case("mixed_gqa4_d32", MIXED, page_size=4, num_heads=8, num_kv_heads=2),
    Case(
        "chunked_prefill_gqa2_d64",
        [(13, 6), (37, 5), (3, 9), (16, 1)],
        page_size=8,
        num_heads=6,
        num_kv_heads=3,
        head_dim=64,
    ),
    Case("sliding_window", MIXED, page_size=4, sliding_window=5, num_splits=2),
    Case("logit_cap", MIXED, page_size=8, scale=1.0, logit_cap=3.0, num_splits=2),
    Case(
        "sinks_split",
        MIXED,
        page_size=4,
        num_heads=4,
        num_kv_heads=1,
        with_sinks=True,
        num_splits=2,
    ),
    Case("sinks_single_split", MIXED, page_size=8, with_sinks=True, num_splits=1),
    Case(
        "many_prefill_seqs",
        [(0, 1), (0, 9), (4, 3), (0, 2), (7, 12), (0, 5), (10, 1)],
        page_size=4,
        num_heads=4,
        num_kv_heads=1,
        sliding_window=6,
    ),
    Case("group3_head_dim24", MIXED, page_size=4, num_heads=6, num_kv_heads=2, head_dim=24),
]


@runs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", TINY_CASES, ids=lambda c: c.name)
def test_tiny_cases(case, dtype):
    check_case(case, dtype)


def test_interpreter_is_chosen_per_launch(monkeypatch):
    """One way to run Triton on CPU: ``TRITON_INTERPRET`` is read when a kernel is launched, so
    the kernels run whenever triton was imported, and refuse CPU tensors without it."""
    if ON_GPU:
        pytest.skip("CPU behaviour")
    q, k, v, cache, meta = _small_inputs()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in (cpu_interpreter_problem() or "")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_paged_attention(q, k, v, *meta.values(), cache)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = triton_paged_attention(q, k, v, *meta.values(), cache)
    assert out.shape == q.shape and not out.isnan().any()


# ----------------------------------------------------------------------------------------------
# validation, registration, fake
# ----------------------------------------------------------------------------------------------
def _small_inputs(head_dim=16, num_heads=2, num_kv_heads=1, cache_heads=None, dtype=torch.float32):
    case = Case("x", [(0, 3)], num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim)
    q, k, v, cache, meta, _ = make_batch(case, dtype, "cpu")
    if cache_heads is not None:
        cache = cache[:, :, :1].expand(-1, -1, cache_heads, -1, -1)
    return q, k, v, cache, meta


@pytest.mark.parametrize(
    "kwargs, inputs, message",
    [
        (dict(), dict(head_dim=512), "head_dim=512"),
        (dict(), dict(cache_heads=3), "disagree"),
        (dict(), dict(num_heads=3, num_kv_heads=2), "not a multiple"),
        (dict(sliding_window=0), dict(), "sliding_window"),
        (dict(logit_cap=0.0), dict(), "logit_cap"),
        (dict(sinks=torch.zeros(5)), dict(), "sinks"),
    ],
    ids=["head_dim", "cache_shape", "gqa", "window", "cap", "sinks"],
)
def test_rejects_unsupported_inputs(kwargs, inputs, message):
    q, k, v, cache, meta = _small_inputs(**inputs)
    with pytest.raises(ValueError, match=message):
        triton_paged_attention(q, k, v, *meta.values(), cache, **kwargs)


def test_fake_has_q_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v, cache, meta = _small_inputs()
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = torch.ops.auto_deploy.triton_attention_with_cache(
            q, k, v, *meta.values(), cache, None, None, None, None
        )
    assert out.shape == q.shape and out.dtype == q.dtype


def _attention_node(head_dim=32, dtype=torch.float16, **kwargs):
    """A traced ``torch_attention`` call whose inputs carry meta ``val`` tensors."""

    def fn(q, k, v):
        return torch.ops.auto_deploy.torch_attention.default(q, k, v, **kwargs)

    gm = torch.fx.symbolic_trace(fn)
    for node, heads in zip(gm.graph.find_nodes(op="placeholder"), (4, 2, 2)):
        node.meta["val"] = torch.empty(1, 8, heads, head_dim, dtype=dtype, device="meta")
    return next(n for n in gm.graph.nodes if n.op == "call_function")


def test_descriptor_registration_and_checks():
    backend = AttentionRegistry.get("triton")
    assert backend.get_cached_attention_op() is torch.ops.auto_deploy.triton_attention_with_cache
    backend.check_supported(_attention_node(sliding_window=8, logit_cap=30.0))
    with pytest.raises(UnsupportedAttentionError, match="head_dim=512 > 256"):
        backend.check_supported(_attention_node(head_dim=512))
    with pytest.raises(UnsupportedAttentionError, match="sliding_window=0"):
        backend.check_supported(_attention_node(sliding_window=0))
    with pytest.raises(UnsupportedAttentionError, match="float64"):
        backend.check_supported(_attention_node(dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# GPU: bf16 and realistic shapes
# ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("case", TINY_CASES, ids=lambda c: c.name)
def test_tiny_cases_bf16(case):
    check_case(case, torch.bfloat16, "cuda")


REALISTIC = [
    # (name, seqs, page_size, num_heads, num_kv_heads, head_dim)
    ("llama1b_like", [(0, 1000), (512, 300), (1023, 1), (200, 1), (777, 1)], 32, 32, 8, 64),
    ("llama8b_like", [(0, 700), (300, 256), (1000, 1), (64, 1)], 64, 32, 8, 128),
    ("mha_d128_decode", [(1024, 1), (513, 1), (999, 1), (31, 1)], 64, 16, 16, 128),
    ("long_prefill_big_tiles", [(0, 2500), (3000, 1)], 64, 32, 8, 128),
    ("long_decode_many_splits", [(8191, 1), (4000, 1)], 64, 32, 8, 128),
]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"]
)
@pytest.mark.parametrize("shape", REALISTIC, ids=lambda s: s[0])
def test_realistic_shapes(shape, dtype):
    name, seqs, page_size, num_heads, num_kv_heads, head_dim = shape
    check_case(Case(name, seqs, page_size, num_heads, num_kv_heads, head_dim), dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "features",
    [
        dict(sliding_window=256),
        dict(logit_cap=30.0),
        dict(with_sinks=True),
        dict(sliding_window=100, logit_cap=50.0, with_sinks=True, num_splits=7),
    ],
    ids=["window", "cap", "sinks", "all_split7"],
)
def test_realistic_features(features):
    seqs = [(0, 600), (400, 200), (1500, 1), (90, 1)]
    case = Case(
        "features", seqs, page_size=32, num_heads=16, num_kv_heads=4, head_dim=128, **features
    )
    check_case(case, torch.bfloat16, "cuda")


@pytest.mark.gpu
def test_decode_replays_in_cuda_graph():
    """The op does no device->host sync: a decode step captures and replays with new values."""
    case = Case(
        "graph",
        [(300, 1), (77, 1), (1000, 1)],
        page_size=32,
        num_heads=16,
        num_kv_heads=4,
        head_dim=128,
    )
    q, k, v, cache, meta, _ = make_batch(case, torch.bfloat16, "cuda")
    op = torch.ops.auto_deploy.triton_attention_with_cache
    static_cache = cache.clone()
    op(q, k, v, *meta.values(), static_cache, None, None, None, None)  # compiles the kernels
    _, step1_cache = reference_attention(q, k, v, cache, meta, None, None, None, None)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = op(q, k, v, *meta.values(), static_cache, None, None, None, None)
    torch.cuda.current_stream().wait_stream(stream)

    # next step: same shapes, new values (one position further, new q/k/v)
    meta["input_pos"] += 1
    q.copy_(torch.randn_like(q))
    k.copy_(torch.randn_like(k))
    v.copy_(torch.randn_like(v))
    static_cache.copy_(step1_cache)
    graph.replay()
    ref_out, ref_cache = reference_attention(q, k, v, step1_cache, meta, None, None, None, None)
    torch.testing.assert_close(
        static_out.reshape(ref_out.shape).float(), ref_out.float(), atol=1.5e-2, rtol=1.5e-2
    )
    torch.testing.assert_close(static_cache, ref_cache, atol=0, rtol=0, equal_nan=True)
