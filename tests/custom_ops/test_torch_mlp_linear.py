"""torch_swiglu_mlp and torch_linear_simple against plain nn.Linear modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import autodeploy.custom_ops  # noqa: F401

ad = torch.ops.auto_deploy


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_mlp_matches_modules(bias, dtype):
    torch.manual_seed(0)
    gate, up, down = nn.Linear(16, 24, bias), nn.Linear(16, 24, bias), nn.Linear(24, 16, bias)
    for layer in (gate, up, down):
        layer.to(dtype)
    x = torch.randn(2, 3, 16).to(dtype)
    expected = down(nn.functional.silu(gate(x)) * up(x))
    biases = (gate.bias, up.bias, down.bias) if bias else (None, None, None)
    out = ad.torch_swiglu_mlp(x, gate.weight, up.weight, down.weight, *biases)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("bias", [False, True])
def test_linear_simple_matches_matmul(bias):
    x, weight = torch.randn(2, 5, 8), torch.randn(3, 8)
    b = torch.randn(3) if bias else None
    expected = x @ weight.T + (b if bias else 0)
    torch.testing.assert_close(ad.torch_linear_simple(x, weight, b), expected)


def test_fake_implementations_agree_with_the_reference():
    x, w1, w2, w3 = torch.randn(2, 8), torch.randn(6, 8), torch.randn(6, 8), torch.randn(8, 6)
    check = ("test_schema", "test_faketensor")
    torch.library.opcheck(ad.torch_swiglu_mlp.default, (x, w1, w2, w3), test_utils=check)
    torch.library.opcheck(ad.torch_linear_simple.default, (x, w1), test_utils=check)
