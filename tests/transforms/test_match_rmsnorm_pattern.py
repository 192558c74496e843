"""match_rmsnorm_pattern: the RMSNorm variants HF models write become torch_rmsnorm(_gated)."""

import pytest
import torch
import torch.nn.functional as F
from matcher_helpers import ad, aten, check_rewrite


class RMSNorm(torch.nn.Module):
    """style: llama (w * norm(x).to(dtype)), right (norm(x).to(dtype) * w), olmo2
    ((w * norm(x)).to(dtype)), gemma (norm(x) * (1 + w)), gated (Mamba-2)."""

    def __init__(self, hidden, style="llama", eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(hidden))
        self.style, self.eps = style, eps

    def normalize(self, x32):
        return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x, gate=None):
        dtype = x.dtype
        x32 = x.to(torch.float32)
        if self.style == "gemma":
            return (self.normalize(x32) * (1.0 + self.weight.float())).type_as(x)
        if self.style == "olmo2":
            return (self.weight * self.normalize(x32)).to(dtype)
        if self.style == "gated":
            return self.weight * self.normalize(x32 * F.silu(gate.to(torch.float32))).to(dtype)
        if self.style == "right":
            return self.normalize(x32).to(dtype) * self.weight
        return self.weight * self.normalize(x32).to(dtype)


class TwoNorms(torch.nn.Module):
    """Two norms (the second with another eps), as in a decoder layer; q/k-norm shaped input."""

    def __init__(self, style, dtype):
        super().__init__()
        self.first = RMSNorm(16, style, 1e-6).to(dtype)
        self.second = RMSNorm(16, style, 1e-5).to(dtype)

    def forward(self, x, gate):
        y = self.first(x, gate) + 1.0
        return self.second(y.view(*y.shape[:-1], 2, 8).reshape(y.shape), gate)


@pytest.mark.parametrize("style", ["llama", "right", "olmo2", "gemma", "gated"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norms_become_one_op_each(style, dtype):
    op = ad.torch_rmsnorm_gated if style == "gated" else ad.torch_rmsnorm
    inputs = dict(x=torch.randn(2, 3, 16).to(dtype), gate=torch.randn(2, 3, 16).to(dtype))
    gm, info = check_rewrite(
        TwoNorms(style, dtype),
        "match_rmsnorm_pattern",
        inputs,
        expect_before={aten.rsqrt: 2},
        expect_after={op: 2, aten.rsqrt: 0, aten.pow: 0},
        atol=1e-5 if dtype == torch.float32 else 3e-2,
    )
    eps = sorted(
        n.args[2] if style != "gated" else n.args[3]
        for n in gm.graph.nodes
        if n.target == op.default
    )
    assert eps == pytest.approx([1e-6, 1e-5])
    assert info.num_matches == 2


class NotANorm(torch.nn.Module):
    def forward(self, x):
        x32 = x.float()
        return x32 * torch.rsqrt(x32.pow(4).mean(-1, keepdim=True) + 1e-6)  # 4th power


def test_a_different_formula_is_left_alone():
    check_rewrite(
        NotANorm(),
        "match_rmsnorm_pattern",
        dict(x=torch.randn(2, 8)),
        expect_before={aten.rsqrt: 1},
        expect_after={ad.torch_rmsnorm: 0},
    )
