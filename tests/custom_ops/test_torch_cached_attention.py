"""The torch reference cached attention op and the ``torch`` attention descriptor.

The op runs on packed, paged batches built with SequenceInfo; every step's output is compared
with ``torch_attention`` (and SDPA) over the whole sequence so far.
"""

import random

import pytest
import torch
import torch.nn.functional as F
from torch.fx import symbolic_trace

import autodeploy  # noqa: F401  (registers the ops)
from autodeploy.config import KvCacheConfig
from autodeploy.custom_ops.attention.descriptor import (
    AttentionRegistry,
    UnsupportedAttentionError,
    attention_args,
)
from autodeploy.shim import SequenceInfo
from autodeploy.utils.errors import RegistryError

cached_attention = torch.ops.auto_deploy.torch_cached_attention
reference_attention = torch.ops.auto_deploy.torch_attention
METADATA = ("batch_info_host", "cu_seqlen", "input_pos", "cache_loc", "cu_num_pages")


class PagedHarness:
    """Sequences with known full q/k/v, fed to the cached op step by step on shuffled pages."""

    def __init__(
        self,
        lengths,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        page_size=4,
        dtype=torch.float32,
        seed=0,
        op=cached_attention,
        kv_layout="HND",
        **features,
    ):
        self.op = op  # the cached-attention op under test (any backend with this contract)
        gen = torch.Generator().manual_seed(seed)
        self.q = [torch.randn(n, num_heads, head_dim, generator=gen).to(dtype) for n in lengths]
        self.k = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in lengths]
        self.v = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in lengths]
        self.features = features
        self.info = SequenceInfo(
            max_seq_len=64, max_batch_size=8, max_num_tokens=128, page_size=page_size
        )
        num_pages = 8 * 16 + 1
        self.info.set_num_pages(num_pages)
        free = list(range(1, num_pages))
        random.Random(seed).shuffle(free)  # pages of a sequence are not contiguous
        self.pages = [free[i * 16 : (i + 1) * 16] for i in range(len(lengths))]
        self.kv_cache = torch.randn(
            num_pages, 2, num_kv_heads, page_size, head_dim, generator=gen
        ).to(dtype)  # garbage must never be read
        if kv_layout == "NHD":  # [num_pages, page_size, 2, num_kv_heads, head_dim]
            self.kv_cache = self.kv_cache.permute(0, 3, 1, 2, 4).contiguous()
        self.pos = [0] * len(lengths)
        self.page_size = page_size

    def step(self, schedule):
        """``schedule``: [(sequence, num_new_tokens)], prefill first. Returns the max error."""
        ids, pos, pages = [], [], []
        for seq, num_new in schedule:
            ids.append([0] * num_new)
            pos.append(self.pos[seq])
            pages.append(self.pages[seq][: -(-(self.pos[seq] + num_new) // self.page_size)])
        self.info.nest_sequences(ids, pos, pages)
        pick = [(seq, slice(self.pos[seq], self.pos[seq] + n)) for seq, n in schedule]
        q, k, v = (torch.cat([t[s][rows] for s, rows in pick]) for t in (self.q, self.k, self.v))
        padding = self.info.batch_size - len(schedule)  # CUDA-graph padding rows, if any
        q, k, v = (torch.cat([t, t.new_zeros(padding, *t.shape[1:])]) for t in (q, k, v))
        shape = (self.info.batch_size, 1) if self.info.is_decode_only else (1, q.shape[0])
        q, k, v = (t.reshape(*shape, *t.shape[1:]) for t in (q, k, v))
        out = self.op(
            q,
            k,
            v,
            *(self.info.get_arg(name) for name in METADATA),
            self.kv_cache,
            self.features.get("scale"),
            self.features.get("sliding_window"),
            self.features.get("logit_cap"),
            self.features.get("sinks"),
        )
        assert out.shape == q.shape and out.dtype == q.dtype
        out = out.reshape(-1, *out.shape[2:])
        errors, row = [], 0
        for seq, num_new in schedule:
            end = self.pos[seq] + num_new
            expected = reference_attention(
                self.q[seq][self.pos[seq] : end][None],
                self.k[seq][:end][None],
                self.v[seq][:end][None],
                None,
                0.0,
                True,
                self.features.get("scale"),
                self.features.get("sinks"),
                self.features.get("sliding_window"),
                self.features.get("logit_cap"),
                "bsnd",
            )[0]
            errors.append((out[row : row + num_new].float() - expected.float()).abs().max())
            row += num_new
            self.pos[seq] = end
        return max(errors).item()


def run_schedule(harness, steps, atol=1e-5):
    for schedule in steps:
        assert harness.step(schedule) <= atol, schedule


def test_prefill_of_several_sequences_across_pages():
    harness = PagedHarness([9, 4, 13])
    run_schedule(harness, [[(0, 9), (1, 4), (2, 13)]])


def test_prefill_matches_sdpa():
    harness = PagedHarness([11], num_heads=4, num_kv_heads=4)
    harness.info.nest_sequences([[0] * 11], [0], [harness.pages[0][:3]])
    q, k, v = harness.q[0][None], harness.k[0][None], harness.v[0][None]
    out = cached_attention(
        q,
        k,
        v,
        *(harness.info.get_arg(n) for n in METADATA),
        harness.kv_cache,
        None,
        None,
        None,
        None,
    )
    expected = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    ).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_chunked_prefill_then_decode():
    harness = PagedHarness([14])
    run_schedule(harness, [[(0, 5)], [(0, 6)], [(0, 1)], [(0, 1)], [(0, 1)]])


def test_decode_only_batches_cross_page_boundaries():
    harness = PagedHarness([10, 7])
    run_schedule(harness, [[(0, 3), (1, 3)]] + [[(0, 1), (1, 1)]] * 4)
    assert harness.info.is_decode_only


def test_mixed_prefill_and_decode_batch():
    harness = PagedHarness([12, 10, 6])
    run_schedule(
        harness,
        [
            [(0, 4)],
            [(1, 5), (0, 1)],  # new prefill joins a decoding sequence
            [(2, 3), (1, 2), (0, 1)],  # chunked continuation in the prefill part
            [(2, 3), (0, 1), (1, 1)],
        ],
    )


def test_sliding_window():
    harness = PagedHarness([15, 9], sliding_window=5)
    run_schedule(harness, [[(0, 10), (1, 6)], [(0, 1), (1, 1)], [(0, 4), (1, 1)]])


def test_logit_cap_and_scale():
    harness = PagedHarness([9, 9], logit_cap=2.0, scale=0.7)
    run_schedule(harness, [[(0, 7), (1, 3)], [(1, 4), (0, 1)]])


def test_sinks():
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    harness = PagedHarness([8, 6], sinks=sinks)
    run_schedule(harness, [[(0, 5), (1, 6)], [(0, 1)], [(0, 2)]])


def test_gqa_with_one_kv_head_and_page_size_one():
    harness = PagedHarness([6, 3], num_heads=6, num_kv_heads=1, page_size=1)
    run_schedule(harness, [[(0, 5), (1, 2)], [(0, 1), (1, 1)]])


def test_bfloat16_accumulates_in_float32():
    harness = PagedHarness([12], dtype=torch.bfloat16, page_size=4)
    run_schedule(harness, [[(0, 8)], [(0, 1)], [(0, 3)]], atol=2e-2)


def test_writes_new_tokens_to_their_pages():
    harness = PagedHarness([6], page_size=4)
    harness.step([(0, 6)])
    pages = harness.pages[0]
    k_cache = harness.kv_cache[:, 0].transpose(1, 2)  # [pages, page_size, n_kv, d]
    v_cache = harness.kv_cache[:, 1].transpose(1, 2)
    assert torch.equal(k_cache[pages[0]], harness.k[0][:4])
    assert torch.equal(k_cache[pages[1], :2], harness.k[0][4:6])
    assert torch.equal(v_cache[pages[1], :2], harness.v[0][4:6])


def test_padding_rows_only_touch_the_scratch_page():
    harness = PagedHarness([5, 5])
    harness.step([(0, 4), (1, 4)])
    harness.info.set_padded_batch_sizes([4])
    before = harness.kv_cache[1:].clone()
    assert harness.step([(0, 1), (1, 1)]) <= 1e-5  # 2 real rows + 2 padding rows
    assert harness.info.batch_size == 4
    changed = (harness.kv_cache[1:] != before).flatten(1).any(1).nonzero().flatten() + 1
    assert set(changed.tolist()) <= {harness.pages[0][1], harness.pages[1][1]}


# ---------------------------------------------------------------- the descriptor


def attention_node(**overrides):
    """A traced torch_attention call with fake shape metadata (q [2, 3, 4, 8], k/v 2 kv heads)."""
    args = dict(
        attn_mask=None,
        dropout_p=0.0,
        is_causal=True,
        scale=0.5,
        sinks=None,
        sliding_window=7,
        logit_cap=30.0,
        layout="bsnd",
    )
    args.update(overrides)

    def fn(q, k, v):
        return reference_attention(
            q,
            k,
            v,
            args["attn_mask"],
            args["dropout_p"],
            args["is_causal"],
            args["scale"],
            args["sinks"],
            args["sliding_window"],
            args["logit_cap"],
            args["layout"],
        )

    gm = symbolic_trace(fn)
    shapes = {"q": (2, 3, 4, 8), "k": (2, 3, 2, 8), "v": (2, 3, 2, overrides.pop("v_dim", 8))}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            node.meta["val"] = torch.empty(shapes[node.target], dtype=torch.bfloat16, device="meta")
    return next(n for n in gm.graph.nodes if n.op == "call_function")


def test_torch_descriptor_contract():
    backend = AttentionRegistry.get("torch")
    node = attention_node()
    backend.check_supported(node)
    assert backend.get_cached_attention_op() is cached_attention
    assert backend.get_source_attention_op() is reference_attention
    assert backend.get_standard_metadata_args() == list(METADATA)
    assert backend.get_prepare_metadata_op() is None
    assert backend.get_host_prepare_function() is None
    assert backend.get_constants(node) == [0.5, 7, 30.0, None]
    handlers = backend.get_cache_initializers(node, KvCacheConfig())
    ((name, handler),) = handlers.items()
    assert name == "kv_cache" and handler.is_paged
    assert (handler.num_kv_heads, handler.head_dim, handler.dtype) == (2, 8, torch.bfloat16)
    handler = backend.get_cache_initializers(node, KvCacheConfig(dtype="float32"))["kv_cache"]
    assert handler.dtype == torch.float32
    assert attention_args(node)["layout"] == "bsnd"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(layout="bnsd"), "match_attention_layout"),
        (dict(dropout_p=0.1), "dropout_p=0.1"),
        (dict(is_causal=False), "is_causal=False"),
        (dict(v_dim=16), r"v \(2, 3, 2, 16\) disagree on num_kv_heads / head_dim"),
    ],
)
def test_unsupported_features_fail_at_build_time(overrides, match):
    with pytest.raises(UnsupportedAttentionError, match=match):
        AttentionRegistry.get("torch").check_supported(attention_node(**overrides))


def test_unknown_backend_suggests_a_name():
    with pytest.raises(RegistryError, match="'torch'"):
        AttentionRegistry.get("torchh")
