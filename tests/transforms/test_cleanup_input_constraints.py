"""cleanup_input_constraints lifts export-time upper bounds on input dims."""

import torch
from torch.export import Dim
from torch.utils._sympy.numbers import int_oo

from autodeploy.export import torch_export_to_gm
from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import fake_mode_of


class Double(torch.nn.Module):
    def forward(self, x):
        return x * 2


def _upper_bounds(gm):
    env = fake_mode_of(gm).shape_env
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    return [env.var_to_range[s.node.expr].upper for s in x.meta["val"].shape if hasattr(s, "node")]


def test_bounded_dims_are_widened_and_unbounded_left_alone():
    dims = {"x": {0: Dim("batch", max=8), 1: Dim.DYNAMIC}}
    gm = torch_export_to_gm(Double(), {"x": torch.randn(2, 3)}, dims)
    assert _upper_bounds(gm)[0] == 8
    out = InferenceOptimizer(
        None, {"cleanup_input_constraints": {"stage": "post_export"}}, instruments=[]
    )(None, gm)
    info = out.meta["_autodeploy"]["transform_history"]["cleanup_input_constraints"]
    assert info.num_matches == 1
    assert _upper_bounds(out) == [int_oo, int_oo]
    assert all(r.upper is int_oo for r in out.range_constraints.values())
    torch.testing.assert_close(out(x=torch.ones(16, 3)), torch.full((16, 3), 2.0))
