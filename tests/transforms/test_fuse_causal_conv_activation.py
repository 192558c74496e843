"""fuse_causal_conv_activation: the SiLU after a causal conv moves into the conv op."""

from __future__ import annotations

import torch
from tiny_mamba import VOCAB, export_tiny_mamba

from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import count_ops, find_nodes
from autodeploy.transforms.pattern import bound_args

aten = torch.ops.aten
ad = torch.ops.auto_deploy
FUSE = {"fuse_causal_conv_activation": {"stage": "post_load_fusion"}}


def test_silu_moves_into_the_conv_op_and_outputs_are_unchanged():
    _, gm = export_tiny_mamba()
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(7).expand(2, 7)
    before = gm(input_ids=ids, position_ids=positions)
    assert count_ops(gm, aten.silu) == 2
    gm = InferenceOptimizer(None, FUSE)(None, gm)
    assert count_ops(gm, aten.silu) == 0
    convs = find_nodes(gm, ad.torch_causal_conv1d)
    assert [bound_args(n)["activation"] for n in convs] == ["silu", "silu"]
    torch.testing.assert_close(gm(input_ids=ids, position_ids=positions), before)


def test_a_conv_with_other_users_keeps_its_silu():
    class TwoUsers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(4, 4, 3, groups=4)

        def forward(self, x):
            y = ad.torch_causal_conv1d(x, self.conv.weight, self.conv.bias, None)
            return torch.nn.functional.silu(y) + y

    gm = torch.export.export(TwoUsers(), (torch.randn(1, 5, 4),)).module()
    gm = InferenceOptimizer(None, FUSE)(None, gm)
    assert count_ops(gm, aten.silu) == 1
