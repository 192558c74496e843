"""cleanup_noop_add removes `x + 0` only where it changes nothing."""

import torch
from torch.export import Dim

from autodeploy.export import torch_export_to_gm
from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import count_ops

ADD = torch.ops.aten.add.Tensor


class Adds(torch.nn.Module):
    def forward(self, x, ids):
        same = x + 0  # no-op
        promoted = ids + 0.0  # int -> float: must stay
        return same * 3 + promoted.unsqueeze(-1)


def test_only_true_noops_are_removed():
    x, ids = torch.randn(2, 4, 3), torch.arange(8).reshape(2, 4)
    dims = {"x": {0: Dim.DYNAMIC}, "ids": {0: Dim.DYNAMIC}}
    gm = torch_export_to_gm(Adds(), {"x": x, "ids": ids}, dims)
    before = count_ops(gm, ADD)
    expected = gm(x=x, ids=ids)
    out = InferenceOptimizer(None, {"cleanup_noop_add": {"stage": "post_export"}}, instruments=[])(
        None, gm
    )
    assert count_ops(out, ADD) == before - 1
    torch.testing.assert_close(out(x=x, ids=ids), expected, atol=0, rtol=0)
    assert out(x=x, ids=ids).dtype == torch.float32
