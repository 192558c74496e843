"""cleanup_noop_slice removes whole-dimension slices and keeps real ones."""

import torch
from torch.export import Dim

from autodeploy.export import torch_export_to_gm
from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import count_ops

SLICE = torch.ops.aten.slice.Tensor


class Slices(torch.nn.Module):
    def forward(self, x):
        whole = x[:, 0:]  # no-op
        part = x[:, 1:3]  # real
        return whole[0:] * 2 + part.sum(-1, keepdim=True)


def test_noop_slices_go_real_slices_stay():
    x = torch.randn(3, 5)
    gm = torch_export_to_gm(Slices(), {"x": x}, {"x": {0: Dim.DYNAMIC}})
    before = count_ops(gm, SLICE)
    expected = gm(x=x)
    out = InferenceOptimizer(
        None, {"cleanup_noop_slice": {"stage": "post_export"}}, instruments=[]
    )(None, gm)
    assert count_ops(out, SLICE) == 1 and before >= 3
    assert (
        out.meta["_autodeploy"]["transform_history"]["cleanup_noop_slice"].num_matches == before - 1
    )
    torch.testing.assert_close(out(x=x), expected, atol=0, rtol=0)
    torch.testing.assert_close(out(x=torch.ones(7, 5)), Slices()(torch.ones(7, 5)))
