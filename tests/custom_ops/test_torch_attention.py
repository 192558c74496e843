"""torch_attention / torch_attention_repeat_kv against independent formulations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import autodeploy.custom_ops  # noqa: F401

ad = torch.ops.auto_deploy
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def qkv(b, s_q, s_k, heads, kv_heads, head_dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, heads, s_q, head_dim, generator=g).to(dtype)
    k = torch.randn(b, kv_heads, s_k, head_dim, generator=g).to(dtype)
    v = torch.randn(b, kv_heads, s_k, head_dim, generator=g).to(dtype)
    return q, k, v  # bnsd


def sdpa_reference(q, k, v, mask=None, is_causal=False, scale=None):
    """F.scaled_dot_product_attention in float32 with kv heads repeated by hand."""
    groups = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(groups, dim=1).float() for t in (k, v))
    return F.scaled_dot_product_attention(
        q.float(), k, v, attn_mask=mask, is_causal=is_causal, scale=scale
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["bnsd", "bsnd"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_causal_gqa_matches_sdpa(dtype, layout, heads, kv_heads):
    q, k, v = qkv(2, 7, 7, heads, kv_heads, 16, dtype)
    expected = sdpa_reference(q, k, v, is_causal=True).to(dtype)
    if layout == "bsnd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        expected = expected.transpose(1, 2)
    out = ad.torch_attention(q, k, v, layout=layout)
    assert out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out.float(), expected.float(), atol=TOL[dtype], rtol=TOL[dtype])


def test_scale_mask_and_non_causal():
    q, k, v = qkv(2, 5, 5, 4, 2, 8, torch.float32)
    bool_mask = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    bool_mask[..., 0] = True  # every row keeps one key
    additive = torch.zeros(2, 1, 5, 5).masked_fill(~bool_mask, float("-inf"))
    for mask in (bool_mask, additive):
        out = ad.torch_attention(q, k, v, mask, 0.0, False, 0.3, layout="bnsd")
        torch.testing.assert_close(out, sdpa_reference(q, k, v, mask=bool_mask, scale=0.3))


def test_fewer_queries_than_keys_align_bottom_right():
    """Queries are the newest tokens: query i sits at position s_k - s_q + i."""
    q, k, v = qkv(1, 3, 8, 2, 2, 8, torch.float32)
    positions = torch.arange(5, 8)[:, None]
    mask = torch.arange(8)[None, :] <= positions
    out = ad.torch_attention(q, k, v, layout="bnsd")
    torch.testing.assert_close(out, sdpa_reference(q, k, v, mask=mask))


@pytest.mark.parametrize("window", [1, 3, 16])
def test_sliding_window(window):
    q, k, v = qkv(2, 9, 9, 4, 2, 8, torch.float32)
    i, j = torch.arange(9)[:, None], torch.arange(9)[None, :]
    mask = (j <= i) & (j > i - window)
    out = ad.torch_attention(q, k, v, sliding_window=window, layout="bnsd")
    torch.testing.assert_close(out, sdpa_reference(q, k, v, mask=mask))


def direct_attention(q, k, v, scale, cap=None, sinks=None):
    """Causal attention written as explicit sums over keys (one head group at a time)."""
    b, heads, s, d = q.shape
    groups = heads // k.shape[1]
    out = torch.zeros(b, heads, s, v.shape[-1])
    for h in range(heads):
        kh, vh = k[:, h // groups].float(), v[:, h // groups].float()
        for i in range(s):
            scores = (q[:, h, i].float()[:, None, :] * kh[:, : i + 1]).sum(-1) * scale
            if cap is not None:
                scores = cap * torch.tanh(scores / cap)
            weights = scores.exp()
            denom = weights.sum(-1, keepdim=True)
            if sinks is not None:
                denom = denom + sinks[h].exp()
            out[:, h, i] = ((weights / denom)[:, :, None] * vh[:, : i + 1]).sum(1)
    return out


def test_logit_cap_and_sinks_match_direct_formula():
    q, k, v = qkv(2, 6, 6, 4, 2, 8, torch.float32)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    scale = 1 / math.sqrt(8)
    out = ad.torch_attention(q, k, v, None, 0.0, True, None, sinks, None, 2.0, "bnsd")
    torch.testing.assert_close(out, direct_attention(q, k, v, scale, cap=2.0, sinks=sinks))


def test_value_head_dim_may_differ():
    q, k, _ = qkv(1, 4, 4, 2, 2, 8, torch.float32)
    v = torch.randn(1, 2, 4, 5)
    out = ad.torch_attention(q, k, v, layout="bnsd")
    assert out.shape == (1, 2, 4, 5)
    torch.testing.assert_close(out, sdpa_reference(q, k, v, is_causal=True))


def test_bad_layout_is_a_clear_error():
    q, k, v = qkv(1, 2, 2, 2, 2, 4, torch.float32)
    with pytest.raises(ValueError, match="layout must be 'bsnd' or 'bnsd'"):
        ad.torch_attention(q, k, v, layout="sbnd")


@pytest.mark.parametrize("n_rep", [1, 3])
def test_repeat_kv_matches_hf_formula(n_rep):
    x = torch.randn(2, 2, 5, 8)
    b, n_kv, s, d = x.shape
    hf = x[:, :, None].expand(b, n_kv, n_rep, s, d).reshape(b, n_kv * n_rep, s, d)
    torch.testing.assert_close(ad.torch_attention_repeat_kv(x, n_rep), hf)


def test_fake_implementations_agree_with_the_reference():
    q, k, v = qkv(2, 3, 3, 4, 2, 8, torch.float32)
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    torch.library.opcheck(
        ad.torch_attention.default, (q, k, v), test_utils=("test_schema", "test_faketensor")
    )
    torch.library.opcheck(
        ad.torch_attention_repeat_kv.default,
        (k.transpose(1, 2), 2),
        test_utils=("test_schema", "test_faketensor"),
    )
