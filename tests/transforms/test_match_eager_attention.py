"""match_eager_attention: the eager attention variants HF models write become torch_attention."""

import pytest
import torch
import torch.nn.functional as F
from matcher_helpers import ad, aten, check_rewrite

SHAPE = (2, 4, 6, 16)  # [batch, heads, seq, head_dim]


class EagerAttention(torch.nn.Module):
    """HF eager_attention_forward and relatives, on [b, n, s, d] inputs (k/v already repeated)."""

    def __init__(self, scaling="multiply", mask=True, fp32_softmax=True, softcap=None):
        super().__init__()
        self.scaling, self.mask, self.fp32_softmax, self.softcap = (
            scaling,
            mask,
            fp32_softmax,
            softcap,
        )
        self.scale = SHAPE[-1] ** -0.5

    def forward(self, q, k, v):
        if self.scaling == "q_before":
            scores = torch.matmul(q * self.scale, k.transpose(2, 3))
        elif self.scaling == "divide":
            scores = torch.matmul(q, k.transpose(-2, -1)) / SHAPE[-1] ** 0.5
        else:
            scores = torch.matmul(q, k.transpose(2, 3)) * self.scale
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        if self.mask:
            s = q.shape[2]
            causal = torch.full((s, s), float("-inf"), device=q.device).triu(1)
            scores = scores + causal[None, None]
        if self.fp32_softmax:
            probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        else:
            probs = F.softmax(scores, dim=-1)
        probs = F.dropout(probs, p=0.1, training=self.training)
        return torch.matmul(probs, v).transpose(1, 2).contiguous()


def inputs():
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(*SHAPE, generator=g) for name in ("q", "k", "v")}


@pytest.mark.parametrize("scaling", ["multiply", "divide", "q_before"])
@pytest.mark.parametrize("mask", [True, False])
def test_variants_become_torch_attention(scaling, mask):
    gm, _ = check_rewrite(
        EagerAttention(scaling, mask),
        "match_eager_attention",
        inputs(),
        expect_before={aten.softmax: 1, ad.torch_attention: 0},
        expect_after={aten.softmax: 0, aten.matmul: 0, aten.dropout: 0, ad.torch_attention: 1},
    )
    node = next(n for n in gm.graph.nodes if n.target == ad.torch_attention.default)
    _, _, _, attn_mask, _, is_causal, scale, _, _, logit_cap, layout = node.args
    assert attn_mask is None and is_causal is mask and layout == "bnsd" and logit_cap is None
    assert scale == pytest.approx(SHAPE[-1] ** -0.5)


def test_softmax_in_input_dtype_and_softcap():
    check_rewrite(
        EagerAttention(fp32_softmax=False),
        "match_eager_attention",
        inputs(),
        expect_before={},
        expect_after={ad.torch_attention: 1, aten.softmax: 0},
    )
    gm, _ = check_rewrite(
        EagerAttention(softcap=2.0),
        "match_eager_attention",
        inputs(),
        expect_before={aten.tanh: 1},
        expect_after={ad.torch_attention: 1, aten.tanh: 0},
    )
    node = next(n for n in gm.graph.nodes if n.target == ad.torch_attention.default)
    assert node.args[9] == pytest.approx(2.0)


class MaskedAttention(torch.nn.Module):
    def forward(self, q, k, v, mask):
        scores = torch.matmul(q, k.transpose(2, 3)) * 0.25 + mask
        return torch.matmul(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)


def test_keep_attn_mask_passes_an_arbitrary_mask_through():
    mask = torch.randn(2, 1, SHAPE[2], SHAPE[2])
    gm, _ = check_rewrite(
        MaskedAttention(),
        "match_eager_attention",
        {**inputs(), "mask": mask},
        expect_before={},
        expect_after={ad.torch_attention: 1},
        keep_attn_mask=True,
    )
    node = next(n for n in gm.graph.nodes if n.target == ad.torch_attention.default)
    assert node.args[3] is not None and node.args[5] is False


def test_bf16_graph_with_casts_matches():
    bf16 = {k: v.to(torch.bfloat16) for k, v in inputs().items()}
    check_rewrite(
        EagerAttention(),
        "match_eager_attention",
        bf16,
        expect_before={},
        expect_after={ad.torch_attention: 1, aten.softmax: 0},
        atol=2e-2,
    )
