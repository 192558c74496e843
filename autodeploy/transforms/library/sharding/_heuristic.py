"""Heuristic TP: column-parallel -> row-parallel pairs around attention and MLPs, the LM head
split with a gather, ``simple_shard_only``.

Attention: from each ``torch_attention`` node, q/k/v are traced back through head-preserving
ops (views, slices, chunks, RoPE, per-head norms) to their projections, and the output forward
through views to the output projection. Heads are never split: q heads are dealt out evenly;
KV heads too, or, with fewer KV heads than ranks, each rank keeps the one its q heads read
(replicated, reported). A fused projection feeding several of q/k/v is split per segment: by
its slice boundaries (Phi-3 style ``[q | k | v]``) or, without slices, by whole heads
(GPT-NeoX style interleaved ``[head][q k v]``).

MLP: a linear whose input is an elementwise function (activation, gating product, chunk) of
other linears' outputs: those open column-wise, it closes row-wise with one all-reduce.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from ._graph import LinearInfo, all_linears, linear_info, shape_of, tied_names
from ._plan import Segment, ShardingPlan, WeightSplit, even_segment, kv_segment

aten = torch.ops.aten
ad = torch.ops.auto_deploy

_PASS_THROUGH = {
    "view", "reshape", "_unsafe_view", "transpose", "permute", "contiguous", "clone", "to",
    "_to_copy", "slice", "chunk", "split", "split_with_sizes", "unsqueeze", "squeeze",
    "torch_rmsnorm", "torch_l2norm", "torch_attention_repeat_kv", "dropout", "alias",
}  # fmt: skip
_ELEMENTWISE = {
    "silu", "gelu", "relu", "sigmoid", "tanh", "mul", "div", "add", "sub", "pow", "square", "to",
    "_to_copy", "getitem", "chunk", "dropout", "neg", "exp", "clone", "contiguous",
}  # fmt: skip
_MAX_DEPTH = 24


def op_name(node: Node) -> str:
    if node.op != "call_function":
        return ""
    if node.target is operator.getitem:
        return "getitem"
    packet = getattr(node.target, "overloadpacket", None)
    return getattr(packet, "__name__", getattr(node.target, "__name__", "")).split(".")[-1]


def _trace_to_linear(gm: GraphModule, node: object, depth: int = 0) -> tuple[Node, list[Node]]:
    """Follow ``node`` back to the linear producing it; also return the path (linear first)."""
    if not isinstance(node, Node) or depth > _MAX_DEPTH:
        raise LookupError("no projection")
    if linear_info(gm, node) is not None:
        return node, [node]
    name = op_name(node)
    if name == "getitem":
        source, index = node.args
        if op_name(source).startswith("torch_rope") and isinstance(index, int):
            found, path = _trace_to_linear(gm, source.args[index], depth + 1)
            return found, path + [node]
        found, path = _trace_to_linear(gm, source, depth + 1)
        return found, path + [node]
    if name in _PASS_THROUGH or name in ("mul", "add"):
        for arg in node.args:
            if isinstance(arg, Node):
                try:
                    found, path = _trace_to_linear(gm, arg, depth + 1)
                    return found, path + [node]
                except LookupError:
                    continue
    raise LookupError("no projection")


def _output_projection(gm: GraphModule, node: Node) -> Node | None:
    for _ in range(_MAX_DEPTH):
        if len(node.users) != 1:
            return None
        (user,) = node.users
        if linear_info(gm, user) is not None and user.args[0] is node:
            return user
        if op_name(user) not in _PASS_THROUGH:
            return None
        node = user
    return None


def _slice_start(path: list[Node]) -> int | None:
    """Start of the feature slice taken right after the linear on ``path`` (None: unsliced)."""
    if len(path) < 2:
        return None
    first = path[1]
    if op_name(first) == "slice" and len(first.args) >= 3:
        return int(first.args[2])
    if op_name(first) == "split_with_sizes" and len(path) > 2 and op_name(path[2]) == "getitem":
        sizes, index = first.args[1], path[2].args[1]
        return int(sum(sizes[:index]))
    return None


def detect_attention(gm: GraphModule, plan: ShardingPlan, claimed: set[str]) -> None:
    world = plan.world_size
    for attn in [n for n in gm.graph.nodes if op_name(n) == "torch_attention"]:
        layout = attn.kwargs.get("layout", attn.args[10] if len(attn.args) > 10 else "bsnd")
        heads_dim = 2 if layout == "bsnd" else 1
        shapes = [shape_of(arg) for arg in attn.args[:3]]
        try:
            traced = [_trace_to_linear(gm, arg) for arg in attn.args[:3]]
        except LookupError:
            plan.notes.append(f"attention {attn.name}: projections not found; left unsharded")
            continue
        out_proj = _output_projection(gm, attn)
        opening = [linear_info(gm, linear) for linear, _ in traced]
        where = opening[0].module.rpartition(".")[0] if opening[0] else attn.name
        if out_proj is None or None in shapes:
            plan.unsharded[where] = "attention output projection not found"
            continue
        num_heads, head_dim = shapes[0][heads_dim], shapes[0][-1]
        num_kv_heads, v_head_dim = shapes[2][heads_dim], shapes[2][-1]
        if {linear.name for linear, _ in traced} & claimed or out_proj.name in claimed:
            plan.unsharded[where] = "already covered by a higher-priority plan"
            continue
        if num_heads % world:
            plan.unsharded[where] = (
                f"num_attention_heads={num_heads} is not divisible by world_size={world}"
            )
            continue
        q_segment = even_segment(num_heads, head_dim, world)
        k_segment, replicated = kv_segment(num_kv_heads, head_dim, world)
        v_segment, _ = kv_segment(num_kv_heads, v_head_dim, world)
        if replicated and world % num_kv_heads:
            plan.unsharded[where] = (
                f"num_key_value_heads={num_kv_heads} neither divides nor is a multiple of "
                f"world_size={world}"
            )
            continue
        by_linear: dict[str, list[tuple[int | None, Segment]]] = {}
        for (linear, path), segment in zip(traced, (q_segment, k_segment, v_segment)):
            by_linear.setdefault(linear.name, []).append((_slice_start(path), segment))
        splits = []
        for (linear, _), info in zip(traced, opening):
            roles = by_linear.pop(linear.name, None)
            if roles is None or info is None:
                continue
            if len(roles) == 1:
                segments = [roles[0][1]]
            elif all(start is not None for start, _ in roles):
                segments = [seg for _, seg in sorted(roles, key=lambda r: r[0])]
            elif num_heads == num_kv_heads:  # interleaved heads: [head][q k v]
                segments = [even_segment(num_heads, info.out_features // num_heads, world)]
            else:
                plan.unsharded[where] = "fused projection with an unknown layout"
                splits = []
                break
            if sum(s.size for s in segments) != info.out_features:
                plan.unsharded[where] = f"{info.module}: fused sizes do not add up"
                splits = []
                break
            splits.append(_split(info, "colwise", segments))
        if not splits:
            continue
        out_info = linear_info(gm, out_proj)
        splits.append(_split(out_info, "rowwise", [even_segment(num_heads, v_head_dim, world)]))
        if replicated:
            splits[0].note = f"{num_kv_heads} KV heads replicated over {world} ranks"
            plan.notes.append(f"{where}: {splits[0].note}")
        plan.splits += splits
        claimed.update(s.node for s in splits)


def _split(info: LinearInfo, strategy: str, segments: list[Segment]) -> WeightSplit:
    return WeightSplit(
        node=info.node.name,
        module=info.module,
        weight=info.weight,
        bias=info.bias,
        strategy=strategy,  # type: ignore[arg-type]
        source="heuristic",
        segments=segments,
    )


def _mlp_leaves(gm: GraphModule, node: object, region: set[Node], depth: int = 0) -> list[Node]:
    if not isinstance(node, Node) or depth > _MAX_DEPTH:
        raise LookupError("not an MLP")
    if linear_info(gm, node) is not None:
        return [node]
    if op_name(node) not in _ELEMENTWISE:
        raise LookupError("not an MLP")
    region.add(node)
    leaves: list[Node] = []
    for arg in node.args:
        if isinstance(arg, Node):
            leaves += _mlp_leaves(gm, arg, region, depth + 1)
    if not leaves:
        raise LookupError("not an MLP")
    return leaves


def detect_mlp(gm: GraphModule, plan: ShardingPlan, claimed: set[str]) -> None:
    world = plan.world_size
    for close in all_linears(gm):
        if close.node.name in claimed:
            continue
        region: set[Node] = set()
        try:
            leaves = list(dict.fromkeys(_mlp_leaves(gm, close.node.args[0], region)))
        except LookupError:
            continue
        if any(leaf.name in claimed for leaf in leaves):
            continue
        infos = [linear_info(gm, leaf) for leaf in leaves]
        if any(set(leaf.users) - region for leaf in leaves):
            continue  # a projection also used outside this block
        where = close.module.rpartition(".")[0]
        splits = []
        for info in infos:
            chunks = [u for u in info.node.users if op_name(u) == "chunk"]
            parts = int(chunks[0].args[1]) if chunks else 1
            units = info.out_features // parts
            if units % world:
                plan.unsharded[where] = (
                    f"{info.module}: {units} features not divisible by world_size={world}"
                )
                break
            splits.append(_split(info, "colwise", [even_segment(units, 1, world)] * parts))
        else:
            splits.append(_split(close, "rowwise", [even_segment(close.in_features, 1, world)]))
            plan.splits += splits
            claimed.update(s.node for s in splits)


def detect_lm_head(gm: GraphModule, plan: ShardingPlan, claimed: set[str]) -> None:
    """The output projection: split its vocabulary and gather the logits (when untied)."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    tied = tied_names(gm)
    for info in reversed(all_linears(gm)):
        if info.node.name in claimed or not _reaches(info.node, output):
            continue
        _gather_split(info, plan, claimed, tied)
        return


def _gather_split(
    info: LinearInfo, plan: ShardingPlan, claimed: set[str], tied: dict[str, list[str]]
) -> None:
    """Split one linear's outputs across ranks (all-gather after it), or say why not."""
    if len(tied.get(info.weight, [])) > 1:
        others = [n for n in tied[info.weight] if n != info.weight]
        plan.unsharded[info.module] = f"weight tied with {others[0]}; replicated"
    elif info.out_features % plan.world_size:
        plan.unsharded[info.module] = (
            f"{info.out_features} outputs not divisible by world_size={plan.world_size}"
        )
    else:
        segment = even_segment(info.out_features, 1, plan.world_size)
        plan.splits.append(_split(info, "gather", [segment]))
        claimed.add(info.node.name)


def _reaches(node: Node, output: Node) -> bool:
    for _ in range(_MAX_DEPTH):
        if output in node.users:
            return True
        if len(node.users) != 1:
            return False
        (node,) = node.users
    return False


def detect_simple(gm: GraphModule, plan: ShardingPlan, claimed: set[str]) -> None:
    """``simple_shard_only``: every linear column-split with an all-gather of its output."""
    tied = tied_names(gm)
    for info in all_linears(gm):
        if info.node.name in claimed:
            continue
        _gather_split(info, plan, claimed, tied)


REPLICATED_BY_CHOICE = ("weight tied", "embedding:")


def report_leftovers(gm: GraphModule, plan: ShardingPlan, claimed: set[str]) -> None:
    """Every linear no source split gets its reason; embeddings are listed as replicated."""
    for node in gm.graph.nodes:
        if op_name(node) == "embedding" and getattr(node.args[0], "op", "") == "get_attr":
            module = str(node.args[0].target).rpartition(".")[0]
            plan.unsharded[module] = "embedding: replicated (a lookup reads only a few rows)"
    linears = all_linears(gm)
    layer_reasons = dict(plan.unsharded)
    for info in linears:
        if info.node.name not in claimed and info.module not in plan.unsharded:
            layer = info.module.rpartition(".")[0]
            reason = layer_reasons.get(layer, "not part of a recognized attention/MLP")
            plan.unsharded[info.module] = reason
    # Keep one entry per linear (and embedding): drop the per-layer entries used above.
    modules = {info.module for info in linears}
    for key in list(plan.unsharded):
        if key not in modules and not plan.unsharded[key].startswith("embedding:"):
            del plan.unsharded[key]
