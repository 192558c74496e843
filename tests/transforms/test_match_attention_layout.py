"""match_attention_layout: torch_attention moves to bsnd (and transposes cancel afterwards)."""

import torch
from matcher_helpers import ad, aten, check_rewrite, run


class HFRoutedAttention(torch.nn.Module):
    """What the "autodeploy" HF attention export emits: projections in bsnd, op in bnsd."""

    def __init__(self):
        super().__init__()
        self.sinks = torch.nn.Parameter(torch.randn(4))

    def forward(self, x):
        b, s, _ = x.shape
        q = x.view(b, s, 4, 8).transpose(1, 2)
        k = (x[..., :16] * 2).view(b, s, 2, 8).transpose(1, 2)
        v = (x[..., 16:] - 1).view(b, s, 2, 8).transpose(1, 2)
        out = ad.torch_attention(q, k, v, None, 0.0, True, 0.3, self.sinks, 3, 5.0, "bnsd")
        return out.transpose(1, 2).reshape(b, s, 32)


def test_layout_changes_and_features_survive():
    gm, info = check_rewrite(
        HFRoutedAttention(),
        "match_attention_layout",
        dict(x=torch.randn(2, 7, 32)),
        expect_before={aten.transpose: 4},
        expect_after={aten.transpose: 8, ad.torch_attention: 1},
    )
    node = next(n for n in gm.graph.nodes if n.target == ad.torch_attention.default)
    assert node.args[5:] == (True, 0.3, node.args[7], 3, 5.0, "bsnd")
    assert info.num_matches == 1
    assert run(gm, "eliminate_redundant_transposes").num_matches == 4
    from autodeploy.transforms.graph_utils import count_ops

    assert count_ops(gm, aten.transpose) == 0


def test_ops_already_in_the_target_layout_are_kept():
    gm, info = check_rewrite(
        HFRoutedAttention(),
        "match_attention_layout",
        dict(x=torch.randn(2, 3, 32)),
        expect_before={},
        expect_after={aten.transpose: 4},
        attn_layout="bnsd",
    )
    assert info.skipped and info.num_matches == 0
