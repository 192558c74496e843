"""sharding_transform_executor: apply the plan ``detect_sharding`` wrote for this rank.

Before (one rank's view of a column -> row pair)::

    y = linear(x, W_q); ... attention ...; o = linear(a, W_o)

After::

    y = linear(x, W_q[rank rows]); ... (views/slices rewritten for local sizes) ...
    o = torch_dist_all_reduce(linear(a, W_o[:, rank cols])) (+ bias after the reduction)

``gather`` splits add ``torch_dist_all_gather(y, -1, world_size)`` after the linear instead.
MoE layers keep their experts' share and end in one all-reduce (``_moe.py``).
Weights are split on the meta device with load hooks (see ``_slicing.py``).
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .... import custom_ops  # noqa: F401  (registers the collectives)
from ...base import BaseTransform
from ...facts import EXPORTED_GRAPH, SHARDING_PLAN, WEIGHTS_SHARDED
from ...graph_utils import canonicalize_graph, run_shape_prop
from ...interface import SharedConfig, Stages, TransformConfig, TransformInfo
from ...registry import TransformRegistry
from ._bmm import apply_bmm_split
from ._heuristic import op_name
from ._moe import apply_expert_split
from ._plan import SHARED_KEY, ShardingPlan, WeightSplit
from ._slicing import shard_parameter
from ._ssm import apply_ssm_layer

ad = torch.ops.auto_deploy
PLAN_META_KEY = "sharding_plan"


def _rewrite_local_sizes(split: WeightSplit, start: Node, rank: int) -> int:
    """Fix literal sizes downstream of a column split (up to the next linear)."""
    boundaries = split.boundaries(rank)
    heads = {seg.num_units: len(seg.kept[rank]) for seg in split.segments if seg.unit_size > 1}
    rewritten = 0
    seen: set[Node] = set()
    frontier = list(start.users)
    while frontier:
        node = frontier.pop()
        if node in seen or op_name(node) in ("linear", "torch_linear_simple"):
            continue
        seen.add(node)
        frontier.extend(node.users)
        name = op_name(node)
        if name in ("view", "reshape", "_unsafe_view") and isinstance(node.args[1], list | tuple):
            shape = list(node.args[1])
            new = [
                boundaries.get(v, v) if i == len(shape) - 1 and isinstance(v, int) else v
                for i, v in enumerate(shape)
            ]
            if len(new) >= 2 and isinstance(new[-2], int) and new[-2] in heads:
                new[-2] = heads[new[-2]]
            if new != shape:
                node.args = (node.args[0], new, *node.args[2:])
                rewritten += 1
        elif name == "slice" and len(node.args) >= 4:
            start_, end = node.args[2], node.args[3]
            new_start = boundaries.get(start_, start_) if start_ else start_
            new_end = boundaries.get(end, end)
            if (new_start, new_end) != (start_, end):
                node.args = (*node.args[:2], new_start, new_end, *node.args[4:])
                rewritten += 1
        elif name == "split_with_sizes" and len(node.args[1]) == len(split.segments):
            node.args = (node.args[0], [s.local_size(rank) for s in split.segments], *node.args[2:])
            rewritten += 1
    return rewritten


def _insert_after(gm: GraphModule, node: Node, op, *extra) -> Node:
    with gm.graph.inserting_after(node):
        new = gm.graph.call_function(op, (node, *extra))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    return new


def apply_split(gm: GraphModule, split: WeightSplit, rank: int, world_size: int) -> None:
    node = next(n for n in gm.graph.nodes if n.name == split.node)
    shard_parameter(gm, split.weight, split.dim, split.indices(rank))
    if split.strategy == "rowwise":
        reduced = _insert_after(gm, node, ad.torch_dist_all_reduce.default)
        if split.bias is not None:  # added once, after the sum over ranks
            args = list(node.args) + [None] * (3 - len(node.args))
            bias = node.kwargs.get("bias", args[2])
            node.args, node.kwargs = (args[0], args[1], None), {}
            with gm.graph.inserting_after(reduced):
                added = gm.graph.call_function(torch.ops.aten.add.Tensor, (reduced, bias))
            reduced.replace_all_uses_with(added, delete_user_cb=lambda user: user is not added)
        return
    if split.bias is not None:
        shard_parameter(gm, split.bias, 0, split.indices(rank))
    if split.strategy == "gather":
        _insert_after(gm, node, ad.torch_dist_all_gather.default, -1, world_size)
    elif split.strategy == "colwise":  # mamba: the mixer's sizes are rewritten by _ssm.py
        _rewrite_local_sizes(split, node, rank)


@TransformRegistry.register("sharding_transform_executor")
class ShardingTransformExecutor(BaseTransform):
    """Split weights, rewrite local sizes and insert collectives as the plan says."""

    stage = Stages.SHARDING
    requires = (EXPORTED_GRAPH, SHARDING_PLAN)
    provides = (WEIGHTS_SHARDED,)

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return TransformConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        plan: ShardingPlan | None = getattr(shared_config, SHARED_KEY, None)
        if not isinstance(gm, GraphModule) or plan is None:
            return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)
        gm.meta[PLAN_META_KEY] = plan
        for expert_split in plan.experts:
            apply_expert_split(gm, expert_split, plan.rank)
        if not plan.splits and not plan.bmm_splits and not plan.experts:
            return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)
        for split in plan.splits:
            apply_split(gm, split, plan.rank, plan.world_size)
        for layer in plan.ssm_layers:
            apply_ssm_layer(gm, layer)
        for bmm in plan.bmm_splits:
            apply_bmm_split(gm, bmm, plan.world_size)
        canonicalize_graph(gm)
        run_shape_prop(gm)  # checks that every local size fits together
        matches = len(plan.splits) + len(plan.bmm_splits) + len(plan.experts)
        return gm, TransformInfo(num_matches=matches, is_clean=True, has_valid_shapes=True)
