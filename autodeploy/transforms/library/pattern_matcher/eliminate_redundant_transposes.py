"""eliminate_redundant_transposes: drop pairs of transposes that undo each other."""

from __future__ import annotations

import operator

from torch.fx import GraphModule, Node

from ...facts import ATTENTION_LAYOUT, ROPE_LAYOUT
from ...graph_utils import find_nodes, is_op
from ...pattern import bound_args, propagate_meta, strip_noise
from ...registry import TransformRegistry
from ._common import PatternMatcherTransform, aten, info_for

_SPLITS = (aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default)


def _dims(node: Node) -> frozenset[int] | None:
    """The two dims a transpose swaps, made non-negative (None if the rank is unknown)."""
    val = node.meta.get("val")
    dims = node.args[1:3]
    if val is None:
        return None if any(d < 0 for d in dims) else frozenset(dims)
    return frozenset(d % val.dim() for d in dims)


def _undoes(outer: Node, inner: Node) -> bool:
    if not is_op(inner, aten.transpose.int):
        return False
    dims = _dims(outer)
    return dims is not None and len(dims) == 2 and dims == _dims(inner)


class _SplitRewriter:
    """``transpose(split(transpose(x))[i])`` is ``split(x)[i]`` when the split dim is not one
    of the swapped dims (fused qkv projections, GPT-NeoX). New splits are made once per split."""

    def __init__(self, gm: GraphModule):
        self.gm = gm
        self.splits: dict[Node, Node] = {}  # old split -> the same split of the untransposed x
        self.items: dict[tuple[Node, int], Node] = {}

    def rewrite(self, outer: Node) -> Node | None:
        item = strip_noise(outer.args[0])
        if item.op != "call_function" or item.target is not operator.getitem:
            return None
        split, index = item.args
        if not is_op(split, _SPLITS):
            return None
        inner = strip_noise(bound_args(split)["self"])
        if not _undoes(outer, inner):
            return None
        rank = inner.meta["val"].dim()
        if bound_args(split)["dim"] % rank in _dims(outer):
            return None
        if (split, index) not in self.items:
            self.items[(split, index)] = self._new_item(split, inner.args[0], index)
        return self.items[(split, index)]

    def _new_item(self, split: Node, source: Node, index: int) -> Node:
        graph = self.gm.graph
        new_split = self.splits.get(split)
        if new_split is None:
            with graph.inserting_after(split):
                new_split = graph.call_function(
                    split.target, (source, *split.args[1:]), dict(split.kwargs)
                )
            self.splits[split] = new_split
        with graph.inserting_after(new_split):
            item = graph.call_function(operator.getitem, (new_split, index))
        for node in (new_split, item):
            node.meta["nn_module_stack"] = split.meta.get("nn_module_stack", {})
        propagate_meta(self.gm, [new_split, item])
        return item


@TransformRegistry.register("eliminate_redundant_transposes")
class EliminateRedundantTransposes(PatternMatcherTransform):
    """``transpose(transpose(x, a, b), a, b)`` is ``x`` (with the same strides, so any later
    view still works).

    before: ``y = transpose(transpose(x, 1, 2), 1, 2); z = f(y)``
    after:  ``z = f(x)``
    Value-preserving nodes between the two (contiguous, same-dtype casts) do not stop it, and
    neither does a chunk/split along another dim (``transpose(chunk(transpose(x))[i])``).
    """

    uses = (ATTENTION_LAYOUT, ROPE_LAYOUT)

    def _apply(self, gm, cm, factory, shared_config):
        splits = _SplitRewriter(gm)
        count = 0
        for node in find_nodes(gm, aten.transpose.int):
            if getattr(node, "_erased", False) or not node.users:
                continue
            inner = strip_noise(node.args[0])
            replacement = inner.args[0] if _undoes(node, inner) else splits.rewrite(node)
            if replacement is not None:
                node.replace_all_uses_with(replacement)
                count += 1
        return gm, info_for(count)
