"""BMM sharding (dim ``bmm``): a batched matmul whose batch dim is a weight's head dimension.

Before (``W``: a parameter ``[H, k, n]``; ``x``: ``[H, m, k]``, computed in the graph)::

    y = bmm(x, W)                                   # [H, m, n]

After, on rank r of W ranks (H divisible by W)::

    y = all_gather(bmm(x[r*H/W : (r+1)*H/W], W[r*H/W : (r+1)*H/W]), dim=0)

Each rank stores and multiplies H/W heads; the gather restores ``[H, m, n]`` for the rest of
the (replicated) graph. The weight may be either operand (``bmm(W, x)`` works the same way).
None of the Hugging Face architectures we support exports such a matmul (their per-head
weights are linears); the README says so, and the tests use a small custom model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from ._graph import shape_of
from ._heuristic import op_name
from ._plan import ShardingPlan, even_segment, segment_indices
from ._slicing import shard_parameter

aten = torch.ops.aten
ad = torch.ops.auto_deploy
_BMM_OPS = ("bmm", "matmul")


@dataclass
class BmmSplit:
    """One batched matmul split over its batch (head) dim for this rank."""

    node: str  # the bmm node
    weight: str  # parameter target, [H, ., .]
    weight_index: int  # which bmm operand is the weight (0 or 1)
    start: int  # first head this rank keeps
    end: int  # one past the last


def _weight_operand(gm: GraphModule, node: Node) -> tuple[int, str] | None:
    for index, arg in enumerate(node.args[:2]):
        if isinstance(arg, Node) and arg.op == "get_attr":
            try:
                value = gm.get_parameter(str(arg.target))
            except AttributeError:
                continue
            if value.dim() == 3:
                return index, str(arg.target)
    return None


def detect_bmm(gm: GraphModule, plan: ShardingPlan) -> None:
    """Plan a split for every batched matmul of a 3-D weight by a computed 3-D tensor."""
    world, rank = plan.world_size, plan.rank
    for node in gm.graph.nodes:
        if op_name(node) not in _BMM_OPS:
            continue
        found = _weight_operand(gm, node)
        if found is None:
            continue
        index, weight = found
        other = shape_of(node.args[1 - index])
        heads = int(gm.get_parameter(weight).shape[0])
        if other is None or len(other) != 3 or other[0] != heads:
            plan.unsharded[weight] = (
                f"batched matmul: the other operand's batch dim is not the weight's {heads} heads"
            )
            continue
        if heads % world:
            plan.unsharded[weight] = (
                f"batched matmul: {heads} heads not divisible by world_size={world}"
            )
            continue
        kept = segment_indices([even_segment(heads, 1, world)], rank)
        plan.bmm_splits.append(BmmSplit(node.name, weight, index, kept[0], kept[-1] + 1))
        plan.notes.append(
            f"{weight}: batched matmul split {heads} -> {heads // world} heads per rank, "
            "all_gather(dim=0)"
        )


def apply_bmm_split(gm: GraphModule, split: BmmSplit, world_size: int) -> None:
    node = next(n for n in gm.graph.nodes if n.name == split.node)
    indices = list(range(split.start, split.end))
    shard_parameter(gm, split.weight, 0, indices)
    other_index = 1 - split.weight_index
    with gm.graph.inserting_before(node):
        local = gm.graph.call_function(
            aten.slice.Tensor, (node.args[other_index], 0, split.start, split.end)
        )
    args = list(node.args)
    args[other_index] = local
    node.args = tuple(args)
    with gm.graph.inserting_after(node):
        gathered = gm.graph.call_function(ad.torch_dist_all_gather.default, (node, 0, world_size))
    node.replace_all_uses_with(gathered, delete_user_cb=lambda user: user is not gathered)


def bmm_rows(gm: GraphModule, plan: ShardingPlan) -> list[tuple[str, ...]]:
    """Plan-table rows for the split batched-matmul weights."""
    rows = []
    for split in plan.bmm_splits:
        value = gm.get_parameter(split.weight)
        shape = "x".join(map(str, value.shape))
        size = f"{value.numel() * value.element_size():,}"
        rows.append((split.weight, "bmm", "heuristic", shape, "all_gather(dim=0)", size))
    return rows
