"""match_l2norm_pattern: L2 normalization (FLA / Qwen3-Next style) becomes torch_l2norm."""

import pytest
import torch
from matcher_helpers import ad, aten, check_rewrite


class L2Norm(torch.nn.Module):
    def __init__(self, upcast):
        super().__init__()
        self.upcast = upcast

    def forward(self, q, k):
        def l2norm(x, eps=1e-6):
            y = x.float() if self.upcast else x
            y = y * torch.rsqrt((y * y).sum(dim=-1, keepdim=True) + eps)
            return y.to(x.dtype)

        return l2norm(q) + l2norm(k * 2.0)


@pytest.mark.parametrize("upcast", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_l2norm_becomes_one_op(upcast, dtype):
    inputs = dict(q=torch.randn(2, 3, 4, 8).to(dtype), k=torch.randn(2, 3, 4, 8).to(dtype))
    gm, info = check_rewrite(
        L2Norm(upcast),
        "match_l2norm_pattern",
        inputs,
        expect_before={aten.rsqrt: 2},
        expect_after={ad.torch_l2norm: 2, aten.rsqrt: 0},
        atol=1e-5 if dtype == torch.float32 else 3e-2,
    )
    assert info.num_matches == 2
