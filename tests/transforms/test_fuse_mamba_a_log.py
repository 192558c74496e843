"""fuse_mamba_a_log: ``-exp(A_log.float())`` becomes the precomputed parameter ``A_fused``."""

from __future__ import annotations

import torch
from tiny_mamba import VOCAB, export_tiny_mamba

from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import count_ops

aten = torch.ops.aten


def test_precomputes_a_and_drops_a_log():
    model, gm = export_tiny_mamba()
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(7).expand(2, 7)
    before = gm(input_ids=ids, position_ids=positions)
    assert count_ops(gm, aten.exp) == 2 and count_ops(gm, aten.neg) == 2
    gm = InferenceOptimizer(None, {"fuse_mamba_a_log": {"stage": "post_load_fusion"}})(None, gm)
    assert count_ops(gm, (aten.exp, aten.neg)) == 0
    names = dict(gm.named_parameters())
    assert not [n for n in names if n.endswith("A_log")]
    for i, mixer in enumerate(model.mixers):
        fused = names[f"mixers.{i}.A_fused"]
        assert fused.dtype == torch.float32
        torch.testing.assert_close(fused, -torch.exp(mixer.A_log.float()))
    torch.testing.assert_close(gm(input_ids=ids, position_ids=positions), before)


def test_other_exp_neg_chains_are_left_alone():
    class NotMamba(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * -torch.exp(self.scale)

    gm = torch.fx.symbolic_trace(NotMamba())
    gm = torch.export.export(gm, (torch.ones(3),)).module()
    out = InferenceOptimizer(None, {"fuse_mamba_a_log": {"stage": "post_load_fusion"}})(None, gm)
    assert count_ops(out, aten.exp) == 1
