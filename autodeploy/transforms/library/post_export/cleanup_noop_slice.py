"""cleanup_noop_slice: drop slices that keep the whole dimension."""

from __future__ import annotations

import torch

from ...base import BaseTransform
from ...facts import EXPORTED_GRAPH
from ...graph_utils import is_op
from ...interface import SharedConfig, Stages, TransformInfo
from ...registry import TransformRegistry

# torch.export writes an open slice end `x[:, 0:]` as the largest int64.
_OPEN_END = 2**62


@TransformRegistry.register("cleanup_noop_slice")
class CleanupNoopSlice(BaseTransform):
    """Remove ``aten.slice(x, dim, 0, <open end>, 1)``, which returns ``x`` unchanged.

    before: ``y = aten.slice.Tensor(x, 0, 0, 9223372036854775807); z = f(y)``
    after:  ``z = f(x)``
    """

    stage = Stages.POST_EXPORT
    requires = (EXPORTED_GRAPH,)

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        removed = 0
        for node in list(gm.graph.nodes):
            if not is_op(node, torch.ops.aten.slice.Tensor):
                continue
            args = list(node.args) + [None] * (5 - len(node.args))
            source, _dim, start, end, step = args[:5]
            start = node.kwargs.get("start", start)
            end = node.kwargs.get("end", end)
            step = node.kwargs.get("step", step)
            if start in (None, 0) and step in (None, 1) and (end is None or _is_open(end)):
                node.replace_all_uses_with(source)
                gm.graph.erase_node(node)
                removed += 1
        return gm, TransformInfo(
            skipped=removed == 0,
            num_matches=removed,
            is_clean=removed == 0,
            has_valid_shapes=True,
        )


def _is_open(end: object) -> bool:
    return isinstance(end, int) and end >= _OPEN_END
