"""match_rope_layout: RoPE ops move to bsnd; transposes around them cancel afterwards."""

import torch
from matcher_helpers import ad, aten, check_rewrite, run

from autodeploy.transforms.graph_utils import count_ops


class BnsdRope(torch.nn.Module):
    def __init__(self, complex_freqs=False):
        super().__init__()
        self.complex_freqs = complex_freqs

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q, k = x.view(b, s, 4, 8).transpose(1, 2), (x * 2).view(b, s, 4, 8).transpose(1, 2)
        if self.complex_freqs:
            freqs = torch.complex(cos[..., :4], sin[..., :4])
            q, k = ad.torch_rope_with_complex_freqs(q, k, freqs, 1)
        else:
            q, k = ad.torch_rope_with_explicit_cos_sin(q, k, cos, sin, 1)
        return (q + k).transpose(1, 2).reshape(b, s, 32)


def inputs():
    angles = torch.randn(2, 5, 8)
    return dict(x=torch.randn(2, 5, 32), cos=angles.cos(), sin=angles.sin())


def test_rope_moves_to_bsnd_and_transposes_cancel():
    example = inputs()
    for complex_freqs, op in (
        (False, ad.torch_rope_with_explicit_cos_sin),
        (True, ad.torch_rope_with_complex_freqs),
    ):
        gm, info = check_rewrite(
            BnsdRope(complex_freqs),
            "match_rope_layout",
            example,
            expect_before={aten.transpose: 3},
            expect_after={aten.transpose: 7, op: 1},
        )
        node = next(n for n in gm.graph.nodes if n.target == op.default)
        assert node.args[-1] == 2 and info.num_matches == 1
        run(gm, "eliminate_redundant_transposes")
        assert count_ops(gm, aten.transpose) == 3  # (q + k) is still transposed back once
        torch.testing.assert_close(gm(**example), BnsdRope(complex_freqs)(**example))
        assert run(gm, "match_rope_layout").num_matches == 0
