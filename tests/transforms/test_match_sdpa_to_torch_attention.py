"""match_sdpa_to_torch_attention: F.scaled_dot_product_attention becomes torch_attention."""

import pytest
import torch
import torch.nn.functional as F
from matcher_helpers import ad, aten, check_rewrite


class Sdpa(torch.nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def forward(self, q, k, v):
        if self.mode == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
        if self.mode == "gqa":
            return F.scaled_dot_product_attention(
                q, k[:, :2], v[:, :2], is_causal=True, enable_gqa=True
            )
        if self.mode == "mask":  # a causal boolean mask, as HF materializes it while tracing
            s = q.shape[2]
            mask = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return F.scaled_dot_product_attention(q, k, v)  # full (non-causal) attention


def inputs():
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(2, 4, 6, 8, generator=g) for name in ("q", "k", "v")}


@pytest.mark.parametrize(
    "mode,causal", [("causal", True), ("gqa", True), ("mask", True), ("full", False)]
)
def test_sdpa_becomes_torch_attention(mode, causal):
    gm, info = check_rewrite(
        Sdpa(mode),
        "match_sdpa_to_torch_attention",
        inputs(),
        expect_before={aten.scaled_dot_product_attention: 1},
        expect_after={aten.scaled_dot_product_attention: 0, ad.torch_attention: 1},
    )
    node = next(n for n in gm.graph.nodes if n.target == ad.torch_attention.default)
    assert node.args[3] is None and node.args[5] is causal and node.args[10] == "bnsd"
    assert info.num_matches == 1


class RandomMask(torch.nn.Module):
    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_keep_attn_mask():
    mask = torch.rand(2, 1, 6, 6) > 0.2
    mask[..., 0] = True
    check_rewrite(
        RandomMask(),
        "match_sdpa_to_torch_attention",
        {**inputs(), "mask": mask},
        expect_before={},
        expect_after={ad.torch_attention: 1},
        keep_attn_mask=True,
    )
