"""cleanup_noop_add: drop additions of a zero scalar that change nothing."""

from __future__ import annotations

import torch
from torch.fx import Node

from ...base import BaseTransform
from ...facts import EXPORTED_GRAPH
from ...graph_utils import is_op, node_val
from ...interface import SharedConfig, Stages, TransformInfo
from ...registry import TransformRegistry


@TransformRegistry.register("cleanup_noop_add")
class CleanupNoopAdd(BaseTransform):
    """Remove ``x + 0`` where the result has ``x``'s dtype and shape.

    before: ``y = aten.add.Tensor(x, 0); z = f(y)``
    after:  ``z = f(x)``
    """

    stage = Stages.POST_EXPORT
    requires = (EXPORTED_GRAPH,)

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        removed = 0
        for node in list(gm.graph.nodes):
            if not is_op(node, torch.ops.aten.add.Tensor) or node.kwargs.get("alpha", 1) != 1:
                continue
            tensor = _noop_operand(node)
            if tensor is None:
                continue
            node.replace_all_uses_with(tensor)
            gm.graph.erase_node(node)
            removed += 1
        return gm, TransformInfo(
            skipped=removed == 0,
            num_matches=removed,
            is_clean=removed == 0,
            has_valid_shapes=True,
        )


def _noop_operand(node: Node) -> Node | None:
    """The tensor operand if the other operand is a zero scalar that keeps dtype/shape."""
    left, right = node.args[0], node.args[1]
    for tensor, other in ((left, right), (right, left)):
        if not isinstance(tensor, Node) or isinstance(other, Node):
            continue
        if other != 0 or isinstance(other, bool):
            continue
        before, after = node_val(tensor), node_val(node)
        if before is None or after is None:
            continue
        # `int_tensor + 0.0` promotes to float: not a no-op.
        if before.dtype == after.dtype and before.shape == after.shape:
            return tensor
    return None
