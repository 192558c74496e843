"""SSM sharding (dim ``ssm``, manual strategy ``mamba``): a Mamba-2 mixer's heads over ranks.

The exported mixer (see ``export/library/mamba2_mixer.py``) is::

    z | xBC | dt = split(in_proj(h), [H*P, H*P + 2*G*N, H])     (z: the gate; optional)
    x | B | C    = split(silu(causal_conv1d(xBC, conv_w, conv_b)), [H*P, G*N, G*N])
    y = ssm(x.view(.., H, P), -exp(A_log), B.view(.., G, N), C.view(.., G, N), D, dt, dt_bias)
    out = out_proj(gated_norm(y.reshape(.., H*P), norm_w, z, group_size))

Each rank keeps H/W heads: their rows of z, x and dt in ``in_proj``, their x channels of the
conv, their entries of A_log, D, dt_bias and the norm weight, and their columns of ``out_proj``
(row-parallel: one all-reduce). Head h reads group h // (H/G), so a rank keeps the G/W groups
its heads read (B and C rows of in_proj and conv channels); with one group (G == 1) every rank
keeps group 0 (replicated, reported). The split/view literals are rewritten for local sizes,
so the state caches sized from the ops' shapes hold H/W heads per rank.

The gated norm normalizes groups of ``group_size`` channels: with whole groups on each rank it
stays local; a norm over one group spanning all channels (G == 1) gets its sum of squares
all-reduced (a second, tiny all-reduce); anything else leaves the mixer whole (reported).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch
from torch.fx import GraphModule, Node

from ....utils.errors import ConfigError
from ....utils.suggest import did_you_mean
from ._graph import LinearInfo, shape_of
from ._heuristic import _split as linear_split
from ._plan import Segment, ShardingPlan, WeightSplit, even_segment, segment_indices
from ._slicing import shard_parameter
from ._ssm_trace import MambaMixer, mixer_module, trace_mixers
from ._tp_plan import _pattern_regex as pattern_regex

aten = torch.ops.aten
ad = torch.ops.auto_deploy
ADD_SSM_HINT = (
    "Mamba mixer: add 'ssm' to detect_sharding.sharding_dims (or a 'mamba' tp_plan entry) "
    "to split its heads over ranks"
)


@dataclass
class SsmLayer:
    """Everything of one mixer besides its two linears (which are ``WeightSplit``s)."""

    module: str  # the mixer's module path
    params: list[tuple[str, int, list[int]]]  # (parameter, dim, indices kept)
    literals: dict[str, tuple]  # node name -> its new args (local sizes)
    sharded_norm: str | None = None  # gated norm whose one group spans every rank
    note: str = ""
    local_sizes: dict[str, int] = field(default_factory=dict)
    source: str = "heuristic"


def _rewrite_shape(node: Node, last: dict[int, int], second_last: dict[int, int]) -> tuple:
    shape = node.args[1] if len(node.args) > 1 else None
    if not isinstance(shape, list | tuple):
        return node.args
    new = list(shape)
    if isinstance(new[-1], int):
        new[-1] = last.get(new[-1], new[-1])
    if len(new) >= 2 and isinstance(new[-2], int):
        new[-2] = second_last.get(new[-2], new[-2])
    return (node.args[0], new, *node.args[2:])


def _groups_and_norm(mixer: MambaMixer, world: int) -> tuple[Segment, str | None, str] | str:
    """(groups segment, gated norm to all-reduce or None, note), or why the mixer stays whole."""
    _, _, num_heads, head_dim = shape_of(mixer.ssm.args[0])
    _, _, num_groups, state_size = shape_of(mixer.ssm.args[2])
    notes = []
    if num_groups % world == 0:
        groups = even_segment(num_groups, state_size, world)
    elif num_groups == 1:
        groups = Segment(1, state_size, [[0]] * world)
        notes.append(f"1 SSM group (B, C) replicated over {world} ranks")
    else:
        return f"n_groups={num_groups} of the SSM is neither 1 nor divisible by world_size={world}"
    if mixer.norm is None:
        return groups, None, "; ".join(notes)
    group_size, width = int(mixer.norm.args[4]), num_heads * head_dim
    if (width // world) % group_size == 0:  # every rank holds whole norm groups
        return groups, None, "; ".join(notes)
    if group_size == width:
        notes.append("gated norm over all heads: its sum of squares is all-reduced")
        return groups, mixer.norm.name, "; ".join(notes)
    return (
        f"the gated norm's groups of {group_size} channels do not fit in a rank's "
        f"{width // world} channels (world_size={world})"
    )


def _literals(mixer: MambaMixer, unit: dict[str, Segment], rank: int) -> dict[str, tuple]:
    """The new args of the mixer's split and view nodes: this rank's sizes."""
    heads, groups = unit["x"], unit["B"]
    conv_segments = [unit[role] for role in mixer.conv_roles]
    in_sizes = [
        sum(s.local_size(rank) for s in conv_segments)
        if role == "xbc"
        else unit[role].local_size(rank)
        for role in mixer.in_roles
    ]
    conv_sizes = [segment.local_size(rank) for segment in conv_segments]
    literals = {
        split.name: (split.args[0], sizes, *split.args[2:])
        for split, sizes in ((mixer.in_split, in_sizes), (mixer.conv_split, conv_sizes))
    }
    heads_map = {heads.num_units: len(heads.kept[rank])}
    for role, nodes in mixer.views.items():
        if role in ("B", "C"):
            last = {groups.size: groups.local_size(rank)}
            second = {groups.num_units: len(groups.kept[rank])}
        elif role == "dt":
            last, second = heads_map, {}
        else:
            last, second = {heads.size: heads.local_size(rank)}, heads_map
        for node in nodes:
            literals[node.name] = _rewrite_shape(node, last, second)
    return literals


def _plan_mixer(gm: GraphModule, mixer: MambaMixer, plan: ShardingPlan, source: str):
    """(in_proj split, out_proj split, SsmLayer) for ``plan.rank``, or a reason string."""
    world, rank = plan.world_size, plan.rank
    _, _, num_heads, head_dim = shape_of(mixer.ssm.args[0])
    if num_heads % world:
        return f"num_heads={num_heads} of the SSM is not divisible by world_size={world}"
    found = _groups_and_norm(mixer, world)
    if isinstance(found, str):
        return found
    groups, sharded_norm, note = found
    heads = even_segment(num_heads, head_dim, world)
    per_head = Segment(num_heads, 1, heads.kept)
    unit = {"z": heads, "x": heads, "B": groups, "C": groups, "dt": per_head}
    conv_segments = [unit[role] for role in mixer.conv_roles]
    in_segments: list[Segment] = []
    for role in mixer.in_roles:
        in_segments += conv_segments if role == "xbc" else [unit[role]]
    if (
        sum(s.size for s in in_segments) != mixer.in_proj.out_features
        or mixer.out_proj.in_features != heads.size
    ):
        return "in_proj / out_proj sizes do not match the SSM's heads and groups"
    for target in mixer.params.values():
        if tuple(gm.get_parameter(target).shape) != (num_heads,):
            return f"{target} is not one value per head"
    head_idx = segment_indices([per_head], rank)
    params = [(target, 0, head_idx) for target in mixer.params.values()]
    conv_idx = segment_indices(conv_segments, rank)
    params += [
        (str(arg.target), 0, conv_idx) for arg in mixer.conv.args[1:3] if isinstance(arg, Node)
    ]
    if mixer.norm is not None:
        params.append((str(mixer.norm.args[1].target), 0, segment_indices([heads], rank)))
    sizes = {"heads": len(heads.kept[rank]), "groups": len(groups.kept[rank])}
    layer = SsmLayer(
        mixer.module, params, _literals(mixer, unit, rank), sharded_norm, note, sizes, source
    )
    return (
        _weight_split(mixer.in_proj, "mamba", source, in_segments, note),
        _weight_split(mixer.out_proj, "rowwise", source, [heads]),
        layer,
    )


def _weight_split(
    info: LinearInfo, strategy: str, source: str, segments: list[Segment], note: str = ""
) -> WeightSplit:
    return replace(linear_split(info, strategy, segments), source=source, note=note)


def detect_ssm(
    gm: GraphModule,
    plan: ShardingPlan,
    claimed: set[str],
    source: str = "heuristic",
    patterns: list[str] | None = None,
) -> list[str]:
    """Split the mixers (those matching ``patterns`` when given); return the matched modules."""
    regexes = [pattern_regex(p) for p in patterns or []]
    matched: list[str] = []
    for ssm, mixer in trace_mixers(gm):
        module = mixer_module(gm, ssm, mixer)
        if regexes and not any(regex.match(module) for regex in regexes):
            continue
        matched.append(module)
        if isinstance(mixer, str):
            plan.unsharded[module] = f"Mamba mixer not recognized: {mixer}"
            continue
        if {mixer.in_proj.node.name, mixer.out_proj.node.name} & claimed:
            continue
        planned = _plan_mixer(gm, mixer, plan, source)
        if isinstance(planned, str):
            plan.unsharded[module] = planned
            continue
        in_split, out_split, layer = planned
        plan.splits += [in_split, out_split]
        plan.ssm_layers.append(layer)
        claimed.update((in_split.node, out_split.node))
        if layer.note:
            plan.notes.append(f"{module}: {layer.note}")
    return matched


def report_unsplit_mixers(gm: GraphModule, plan: ShardingPlan, claimed: set[str]) -> None:
    """Without ``ssm`` in sharding_dims: name the mixers left whole, with the hint."""
    for _, mixer in trace_mixers(gm):
        if isinstance(mixer, MambaMixer) and mixer.in_proj.node.name not in claimed:
            plan.unsharded[mixer.module] = ADD_SSM_HINT


def ssm_from_tp_plan(
    gm: GraphModule, plan: ShardingPlan, tp_plan: dict[str, str], claimed: set[str]
) -> None:
    """The manual plan's ``mamba`` entries: each pattern must match a Mamba mixer."""
    patterns = [pattern for pattern, strategy in tp_plan.items() if strategy == "mamba"]
    mixers = sorted({mixer_module(gm, ssm, mixer) for ssm, mixer in trace_mixers(gm)})
    for pattern in patterns:
        if detect_ssm(gm, plan, claimed, "manual", [pattern]):
            continue
        generic = sorted({re.sub(r"\.\d+\.", ".*.", m) for m in mixers})
        known = f" Mamba mixers look like: {', '.join(generic[:4])}." if generic else ""
        raise ConfigError(
            f"detect_sharding.manual_config.tp_plan: the 'mamba' pattern {pattern!r} matches "
            f"no Mamba mixer.{did_you_mean(pattern, generic)}{known or ' The model has none.'}"
        )


def apply_ssm_layer(gm: GraphModule, layer: SsmLayer) -> None:
    """Split the mixer's non-linear parameters and rewrite its local sizes."""
    for target, dim, indices in layer.params:
        shard_parameter(gm, target, dim, indices)
    by_name = {node.name: node for node in gm.graph.nodes}
    for name, args in layer.literals.items():
        by_name[name].args = args
    if layer.sharded_norm is not None:
        _shard_gated_norm(gm, by_name[layer.sharded_norm])


def _shard_gated_norm(gm: GraphModule, norm: Node) -> None:
    """A gated RMSNorm over all (sharded) channels: the mean of squares over every rank.

    ``norm(x * silu(z)) * w`` (or ``norm(x) * w * silu(z)``) with the local sum of squares
    all-reduced and divided by the full width.
    """
    x, weight, gate, eps, group_size = norm.args[:5]
    norm_before_gate = (
        norm.args[5] if len(norm.args) > 5 else norm.kwargs.get("norm_before_gate", False)
    )
    graph = gm.graph
    call = graph.call_function
    with graph.inserting_before(norm):
        x32 = call(aten._to_copy.default, (x,), {"dtype": torch.float32})
        gate32 = None
        if gate is not None:
            gate32 = call(aten._to_copy.default, (gate,), {"dtype": torch.float32})
            gate32 = call(aten.silu.default, (gate32,))
        if gate32 is not None and not norm_before_gate:
            x32 = call(aten.mul.Tensor, (x32, gate32))
        squares = call(aten.sum.dim_IntList, (call(aten.mul.Tensor, (x32, x32)), [-1], True))
        total = call(ad.torch_dist_all_reduce.default, (squares,))
        mean = call(aten.div.Tensor, (total, float(group_size)))
        scale = call(aten.rsqrt.default, (call(aten.add.Tensor, (mean, float(eps))),))
        y = call(aten.mul.Tensor, (x32, scale))
        if gate32 is not None and norm_before_gate:
            y = call(aten.mul.Tensor, (y, gate32))
        dtype = norm.meta["val"].dtype if "val" in norm.meta else torch.float32
        y = call(aten._to_copy.default, (y,), {"dtype": dtype})
        out = call(aten.mul.Tensor, (weight, y))
    norm.replace_all_uses_with(out)
    graph.erase_node(norm)


def ssm_rows(gm: GraphModule, plan: ShardingPlan) -> list[tuple[str, ...]]:
    """Plan-table rows for each mixer's parameters besides in_proj / out_proj."""
    rows = []
    for layer in plan.ssm_layers:
        size = 0
        for target, _, _ in layer.params:
            value = gm.get_parameter(target)
            size += value.numel() * value.element_size()
        local = f"{layer.local_sizes['heads']} heads, {layer.local_sizes['groups']} grp"
        collective = "all_reduce (norm)" if layer.sharded_norm else "-"
        rows.append(
            (
                f"{layer.module} (conv, A, D, dt, norm)",
                "mamba",
                layer.source,
                local,
                collective,
                f"{size:,}",
            )
        )
    return rows
