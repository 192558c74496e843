"""Helpers for pattern-matcher tests: export a small module, run one transform, compare."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.export import Dim
from torch.fx import GraphModule

from autodeploy.export import set_graph_device
from autodeploy.export.export import torch_export_to_gm
from autodeploy.transforms import SharedConfig, TransformInfo, TransformRegistry
from autodeploy.transforms.graph_utils import count_ops

ad = torch.ops.auto_deploy
aten = torch.ops.aten


def export(module: torch.nn.Module, dynamic_batch: bool = True, **inputs: torch.Tensor):
    """Export like the pipeline does (non-strict, meta tracing); dim 0 dynamic if asked."""
    batch = Dim("batch", min=1, max=64)
    shapes = {name: ({0: batch} if dynamic_batch else {}) for name in inputs}
    gm = torch_export_to_gm(module.eval(), inputs, shapes)
    set_graph_device(gm, "cpu")
    return gm


def run(
    gm: GraphModule,
    name: str,
    shared: SharedConfig | None = None,
    factory: Any = None,
    **config: Any,
) -> TransformInfo:
    transform = TransformRegistry.get(name).from_kwargs(stage="pattern_matcher", **config)
    out, info = transform(gm, None, factory, shared or SharedConfig(), TransformInfo())
    assert out is gm
    return info


def check_rewrite(module, name, inputs, expect_before, expect_after, atol=1e-5, **config):
    """Export, run ``name``; op counts before/after ({op: count}) and outputs vs the graph
    before the transform. Returns the rewritten graph."""
    gm = export(module, **inputs)
    before = copy.deepcopy(gm)
    for op, n in expect_before.items():
        assert count_ops(gm, op) == n, f"before {name}: {op} x{count_ops(gm, op)}, expected {n}"
    info = run(gm, name, **config)
    for op, n in expect_after.items():
        assert count_ops(gm, op) == n, (
            f"after {name}: {op} x{count_ops(gm, op)}, expected {n}\n{gm.code}"
        )
    with torch.no_grad():
        torch.testing.assert_close(gm(**inputs), before(**inputs), atol=atol, rtol=atol)
    return gm, info
