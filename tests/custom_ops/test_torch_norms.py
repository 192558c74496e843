"""Normalization reference ops against torch's own and direct formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import autodeploy.custom_ops  # noqa: F401

ad = torch.ops.auto_deploy
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 16), (2, 5, 64), (2, 3, 4, 8)])
def test_rmsnorm_matches_torch_rms_norm(dtype, shape):
    x = torch.randn(*shape).to(dtype)
    weight = torch.randn(shape[-1]).to(dtype)
    out = ad.torch_rmsnorm(x, weight, 1e-6)
    expected = F.rms_norm(x.float(), (shape[-1],), weight.float(), 1e-6)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.float(), expected, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("group_size", [16, 4])
def test_gated_rmsnorm_matches_per_group_formula(norm_before_gate, group_size):
    x, gate = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    weight = torch.randn(16)
    out = ad.torch_rmsnorm_gated(x, weight, gate, 1e-5, group_size, norm_before_gate)
    gated = x * F.silu(gate) if not norm_before_gate else x
    groups = [
        F.rms_norm(chunk, (group_size,), None, 1e-5) for chunk in gated.split(group_size, dim=-1)
    ]
    expected = torch.cat(groups, dim=-1)
    if norm_before_gate:
        expected = expected * F.silu(gate)
    torch.testing.assert_close(out, expected * weight)


def test_gated_rmsnorm_without_gate_is_rmsnorm():
    x, weight = torch.randn(4, 32), torch.randn(32)
    out = ad.torch_rmsnorm_gated(x, weight, None, 1e-6, 32)
    torch.testing.assert_close(out, ad.torch_rmsnorm(x, weight, 1e-6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_l2norm_matches_normalize(dtype):
    x = torch.randn(2, 3, 4, 16).to(dtype)
    out = ad.torch_l2norm(x, 0.0)
    expected = F.normalize(x.float(), dim=-1)
    torch.testing.assert_close(out.float(), expected, atol=TOL[dtype], rtol=TOL[dtype])
    # eps sits inside the square root
    small = torch.full((1, 4), 1e-3)
    torch.testing.assert_close(ad.torch_l2norm(small, 1.0), small / (4e-6 + 1.0) ** 0.5)


def test_fake_implementations_agree_with_the_reference():
    x, gate, weight = torch.randn(2, 8), torch.randn(2, 8), torch.randn(8)
    check = ("test_schema", "test_faketensor")
    torch.library.opcheck(ad.torch_rmsnorm.default, (x, weight, 1e-6), test_utils=check)
    torch.library.opcheck(
        ad.torch_rmsnorm_gated.default, (x, weight, gate, 1e-6, 4, False), test_utils=check
    )
    torch.library.opcheck(ad.torch_l2norm.default, (x, 1e-6), test_utils=check)
