"""match_rope_pattern: HF, GLM and DeepSeek RoPE become one op per (q, k) pair."""

import pytest
import torch
from matcher_helpers import ad, aten, check_rewrite

B, N, S, D = 2, 4, 6, 16


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def hf_rope(q, k, cos, sin, unsqueeze_dim=1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def glm_rope(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    cos = cos[..., : cos.shape[-1] // 2].repeat_interleave(2, dim=-1)
    sin = sin[..., : sin.shape[-1] // 2].repeat_interleave(2, dim=-1)
    rot = cos.shape[-1]
    q_rot, q_pass, k_rot, k_pass = q[..., :rot], q[..., rot:], k[..., :rot], k[..., rot:]

    def rotate_pairs(x):
        return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)

    q_embed = (q_rot * cos) + (rotate_pairs(q_rot) * sin)
    k_embed = (k_rot * cos) + (rotate_pairs(k_rot) * sin)
    return torch.cat([q_embed, q_pass], dim=-1), torch.cat([k_embed, k_pass], dim=-1)


def deepseek_rope(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    b, h, s, d = q.shape
    q = q.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    k = k.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class RopeAttention(torch.nn.Module):
    """Projection, RoPE in the HF shapes, then the canonical attention op."""

    def __init__(self, style="hf", rotary_dim=D, layout="bnsd"):
        super().__init__()
        self.style, self.rotary_dim, self.layout = style, rotary_dim, layout

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q, k, v = (t.view(b, s, N, D) for t in (x, x * 0.5, x - 1.0))
        if self.layout == "bnsd":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        r = self.rotary_dim
        if self.style == "glm":
            q, k = glm_rope(q, k, cos, sin)
        elif self.style == "deepseek":
            q, k = deepseek_rope(q, k, cos, sin)
        elif self.style == "lone_q":  # only the query is rotated
            q = (q * cos.unsqueeze(1)) + (rotate_half(q) * sin.unsqueeze(1))
        else:
            unsqueeze_dim = 1 if self.layout == "bnsd" else 2
            q_rot, k_rot = hf_rope(q[..., :r], k[..., :r], cos, sin, unsqueeze_dim)
            q, k = torch.cat((q_rot, q[..., r:]), -1), torch.cat((k_rot, k[..., r:]), -1)
        return ad.torch_attention(q, k, v, layout=self.layout)


def inputs(rotary_dim=D):
    positions = torch.arange(S, dtype=torch.float32)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    emb = torch.cat([positions[:, None] * inv_freq] * 2, dim=-1)[None].expand(B, S, rotary_dim)
    return dict(x=torch.randn(B, S, N * D), cos=emb.cos(), sin=emb.sin())


ROPE_OPS = (
    ad.torch_rope_with_explicit_cos_sin,
    ad.torch_rope_with_complex_freqs,
    ad.torch_rope_with_qk_interleaving,
)


@pytest.mark.parametrize(
    "style,rotary_dim,layout,op",
    [
        ("hf", D, "bnsd", ad.torch_rope_with_explicit_cos_sin),
        ("hf", D // 2, "bnsd", ad.torch_rope_with_explicit_cos_sin),  # partial rotary (Phi, NeoX)
        ("hf", D, "bsnd", ad.torch_rope_with_explicit_cos_sin),
        ("glm", D // 2, "bnsd", ad.torch_rope_with_complex_freqs),
        ("deepseek", D, "bnsd", ad.torch_rope_with_qk_interleaving),
    ],
)
def test_rope_styles_become_one_op_per_pair(style, rotary_dim, layout, op):
    gm, info = check_rewrite(
        RopeAttention(style, rotary_dim, layout),
        "match_rope_pattern",
        inputs(rotary_dim),
        expect_before={op: 0},
        expect_after={op: 1, aten.neg: 0, aten.cat: 0},
    )
    assert info.num_matches == 1
    node = next(n for n in gm.graph.nodes if n.target == op.default)
    assert node.args[0].meta["val"].shape[-1] == D  # partial rotary: the op gets whole heads


def test_a_lone_rotated_tensor_still_gets_the_op():
    check_rewrite(
        RopeAttention("lone_q"),
        "match_rope_pattern",
        inputs(),
        expect_before={},
        expect_after={ad.torch_rope_with_explicit_cos_sin: 1, aten.neg: 0},
    )


class PromotingRope(torch.nn.Module):
    """OLMo-2 in bf16: float32 cos/sin promote q/k, and the result is cast back."""

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q, k, v = (t.view(b, s, N, D).transpose(1, 2) for t in (x, x * 0.5, x - 1.0))
        q_embed, k_embed = hf_rope(q, k, cos, sin)
        return ad.torch_attention(q_embed.to(q.dtype), k_embed.to(k.dtype), v, layout="bnsd")


def test_a_promoting_rope_cast_back_is_absorbed():
    example = inputs()
    example["x"] = example["x"].to(torch.bfloat16)
    check_rewrite(
        PromotingRope(),
        "match_rope_pattern",
        example,
        expect_before={},
        expect_after={ad.torch_rope_with_explicit_cos_sin: 1, aten.neg: 0},
        atol=2e-2,
    )
