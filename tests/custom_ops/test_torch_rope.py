"""RoPE reference ops against the formulas models write (full and partial rotary, layouts)."""

from __future__ import annotations

import pytest
import torch

import autodeploy.custom_ops  # noqa: F401

ad = torch.ops.auto_deploy
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def cos_sin(b, s, rotary_dim, dtype, base=10000.0):
    """HF-style tables: [b, s, r], the frequencies repeated over both halves."""
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    positions = torch.arange(s).float()[None, :].expand(b, s)
    freqs = positions[..., None] * inv_freq  # [b, s, r/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype), freqs


def hf_rope(x, cos, sin, unsqueeze_dim):
    """HF apply_rotary_pos_emb for one tensor, partial rotary as Phi/GPT-NeoX write it."""
    r = cos.shape[-1]
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    x_rot, x_pass = x[..., :r], x[..., r:]
    half = r // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat(((x_rot * cos) + (rotated * sin), x_pass), dim=-1)


def make_qk(layout, dtype, head_dim=16):
    g = torch.Generator().manual_seed(0)
    shape = (2, 4, 5, head_dim) if layout == "bnsd" else (2, 5, 4, head_dim)
    return torch.randn(*shape, generator=g).to(dtype), torch.randn(*shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout,unsqueeze_dim", [("bnsd", 1), ("bsnd", 2)])
@pytest.mark.parametrize("rotary_dim", [16, 8])
def test_explicit_cos_sin_matches_hf(dtype, layout, unsqueeze_dim, rotary_dim):
    q, k = make_qk(layout, dtype)
    cos, sin, _ = cos_sin(2, 5, rotary_dim, dtype)
    q_out, k_out = ad.torch_rope_with_explicit_cos_sin(q, k, cos, sin, unsqueeze_dim)
    for out, x in ((q_out, q), (k_out, k)):
        expected = hf_rope(x.float(), cos.float(), sin.float(), unsqueeze_dim)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, atol=TOL[dtype], rtol=TOL[dtype])
    # the pass-through channels are untouched
    torch.testing.assert_close(q_out[..., rotary_dim:], q[..., rotary_dim:])


@pytest.mark.parametrize("rotary_dim", [16, 8])
def test_complex_freqs_rotate_adjacent_pairs(rotary_dim):
    q, k = make_qk("bsnd", torch.float32)
    _, _, freqs = cos_sin(2, 5, rotary_dim, torch.float32)
    freqs_cis = torch.polar(torch.ones_like(freqs), freqs)  # [b, s, r/2]
    q_out, k_out = ad.torch_rope_with_complex_freqs(q, k, freqs_cis, 2)
    cos, sin = freqs.cos()[:, :, None], freqs.sin()[:, :, None]
    for out, x in ((q_out, q), (k_out, k)):
        even, odd = x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]
        expected = torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2)
        torch.testing.assert_close(out[..., :rotary_dim], expected)
        torch.testing.assert_close(out[..., rotary_dim:], x[..., rotary_dim:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_interleaving_matches_deepseek(dtype):
    q, k = make_qk("bnsd", dtype)
    cos, sin, _ = cos_sin(2, 5, 16, dtype)
    q_out, k_out = ad.torch_rope_with_qk_interleaving(q, k, cos, sin, 1)
    for out, x in ((q_out, q), (k_out, k)):
        b, h, s, d = x.shape
        deinterleaved = x.float().view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
        expected = hf_rope(deinterleaved, cos.float(), sin.float(), 1)
        torch.testing.assert_close(out.float(), expected, atol=TOL[dtype], rtol=TOL[dtype])


def test_fake_implementations_agree_with_the_reference():
    q, k = make_qk("bnsd", torch.float32)
    cos, sin, freqs = cos_sin(2, 5, 8, torch.float32)
    check = ("test_schema", "test_faketensor")
    torch.library.opcheck(
        ad.torch_rope_with_explicit_cos_sin.default, (q, k, cos, sin, 1), test_utils=check
    )
    torch.library.opcheck(
        ad.torch_rope_with_qk_interleaving.default, (q, k, cos, sin, 1), test_utils=check
    )
    freqs_cis = torch.polar(torch.ones_like(freqs), freqs)
    torch.library.opcheck(
        ad.torch_rope_with_complex_freqs.default, (q, k, freqs_cis, 1), test_utils=check
    )
