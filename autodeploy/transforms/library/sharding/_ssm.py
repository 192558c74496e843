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
from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule, Node

from ....utils.errors import ConfigError
from ....utils.suggest import did_you_mean
from ._graph import LinearInfo, linear_info, shape_of
from ._heuristic import op_name
from ._plan import Segment, ShardingPlan, WeightSplit, even_segment, segment_indices
from ._slicing import shard_parameter
from ._tp_plan import _pattern_regex as pattern_regex

aten = torch.ops.aten
ad = torch.ops.auto_deploy
_VIEWS = ("view", "reshape", "_unsafe_view", "contiguous", "to", "_to_copy")
ADD_SSM_HINT = (
    "Mamba mixer: add 'ssm' to detect_sharding.sharding_dims (or a 'mamba' tp_plan entry) "
    "to split its heads over ranks"
)


class _Unrecognized(Exception):
    """The mixer around a ``torch_ssm`` node does not have the expected layout."""


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


@dataclass
class _Mixer:
    """The nodes of one exported mixer."""

    ssm: Node
    in_proj: LinearInfo
    out_proj: LinearInfo
    in_split: Node
    in_roles: list[str]  # per in_proj chunk: z, xbc, dt
    conv: Node
    conv_split: Node
    conv_roles: list[str]  # per conv chunk: x, B, C
    views: dict[str, list[Node]]  # role -> view/reshape nodes to rewrite
    norm: Node | None
    params: dict[str, str]  # A_log, D, dt_bias -> parameter target

    @property
    def module(self) -> str:
        return self.in_proj.module.rpartition(".")[0]


def _back_through_views(node: object, views: list[Node]) -> Node:
    while isinstance(node, Node) and op_name(node) in _VIEWS:
        views.append(node)
        node = node.args[0]
    if not isinstance(node, Node):
        raise _Unrecognized("an SSM input is not computed in the graph")
    return node


def _chunk(node: Node, split: Node | None = None) -> tuple[Node, int]:
    """(split_with_sizes node, index) of a getitem of a split."""
    if op_name(node) != "getitem" or op_name(node.args[0]) != "split_with_sizes":
        raise _Unrecognized(f"{node.name} is not a chunk of a split_with_sizes")
    if split is not None and node.args[0] is not split:
        raise _Unrecognized(f"{node.name} comes from another split")
    return node.args[0], int(node.args[1])


def _param(node: object) -> str:
    """The parameter behind A (``-exp(A_log)``), D or dt_bias."""
    while isinstance(node, Node) and op_name(node) in (*_VIEWS, "exp", "neg"):
        node = node.args[0]
    if not isinstance(node, Node) or node.op != "get_attr":
        raise _Unrecognized("A, D or dt_bias is not a parameter")
    return str(node.target)


def _roles(split: Node, by_index: dict[int, str], what: str) -> list[str]:
    count = len(split.args[1])
    if sorted(by_index) != list(range(count)):
        raise _Unrecognized(f"the {what} split has chunks the mixer does not use as expected")
    return [by_index[i] for i in range(count)]


def _trace_mixer(gm: GraphModule, ssm: Node) -> _Mixer:
    x_arg, a_arg, b_arg, c_arg, d_arg, dt_arg, dt_bias_arg = ssm.args[:7]
    views: dict[str, list[Node]] = {role: [] for role in ("x", "B", "C", "dt", "y")}
    conv_split, ix = _chunk(_back_through_views(x_arg, views["x"]))
    _, ib = _chunk(_back_through_views(b_arg, views["B"]), conv_split)
    _, ic = _chunk(_back_through_views(c_arg, views["C"]), conv_split)
    conv = _back_through_views(conv_split.args[0], [])
    while op_name(conv) in ("silu",):
        conv = conv.args[0]
    if op_name(conv) != "torch_causal_conv1d":
        raise _Unrecognized("x, B and C do not come from one torch_causal_conv1d")
    in_split, ixbc = _chunk(_back_through_views(conv.args[0], []))
    _, idt = _chunk(_back_through_views(dt_arg, views["dt"]), in_split)
    in_roles = {ixbc: "xbc", idt: "dt"}
    in_proj = linear_info(gm, _back_through_views(in_split.args[0], []))
    node, norm = ssm, None
    while True:  # forward: views, the gated norm, views, out_proj
        if len(node.users) != 1:
            raise _Unrecognized("the SSM output has several users")
        (user,) = node.users
        if op_name(user) == "torch_rmsnorm_gated" and norm is None and user.args[0] is node:
            norm = user
            _, iz = _chunk(_back_through_views(user.args[2], []), in_split)
            in_roles[iz] = "z"
        elif op_name(user) in _VIEWS:
            views["y"].append(user)
        else:
            break
        node = user
    out_proj = linear_info(gm, user)
    if in_proj is None or out_proj is None or user.args[0] is not node:
        raise _Unrecognized("in_proj / out_proj are not linears with parameter weights")
    return _Mixer(
        ssm=ssm,
        in_proj=in_proj,
        out_proj=out_proj,
        in_split=in_split,
        in_roles=_roles(in_split, in_roles, "in_proj"),
        conv=conv,
        conv_split=conv_split,
        conv_roles=_roles(conv_split, {ix: "x", ib: "B", ic: "C"}, "conv"),
        views=views,
        norm=norm,
        params={
            "A_log": _param(a_arg),
            "D": _param(d_arg),
            "dt_bias": _param(dt_bias_arg),
        },
    )


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


def _plan_mixer(gm: GraphModule, mixer: _Mixer, plan: ShardingPlan, source: str):
    """(in_proj split, out_proj split, SsmLayer) for ``plan.rank``, or a reason string."""
    world, rank = plan.world_size, plan.rank
    _, _, num_heads, head_dim = shape_of(mixer.ssm.args[0])
    _, _, num_groups, state_size = shape_of(mixer.ssm.args[2])
    if num_heads % world:
        return f"num_heads={num_heads} of the SSM is not divisible by world_size={world}"
    heads = even_segment(num_heads, head_dim, world)
    note = ""
    if num_groups % world == 0:
        groups = even_segment(num_groups, state_size, world)
    elif num_groups == 1:
        groups = Segment(1, state_size, [[0]] * world)
        note = f"1 SSM group (B, C) replicated over {world} ranks"
    else:
        return f"n_groups={num_groups} of the SSM is neither 1 nor divisible by world_size={world}"
    sharded_norm = None
    if mixer.norm is not None:
        group_size, width = int(mixer.norm.args[4]), num_heads * head_dim
        if (width // world) % group_size == 0:
            pass  # every rank holds whole norm groups
        elif group_size == width:
            sharded_norm = mixer.norm.name
            note = (note + "; " if note else "") + "gated norm over all heads: its sum of "
            note += "squares is all-reduced"
        else:
            return (
                f"the gated norm's groups of {group_size} channels do not fit in a rank's "
                f"{width // world} channels (world_size={world})"
            )
    unit = {
        "z": heads,
        "x": heads,
        "B": groups,
        "C": groups,
        "dt": Segment(num_heads, 1, heads.kept),
    }
    conv_segments = [unit[role] for role in mixer.conv_roles]
    in_segments: list[Segment] = []
    for role in mixer.in_roles:
        in_segments += conv_segments if role == "xbc" else [unit[role]]
    expected = sum(s.size for s in in_segments)
    if expected != mixer.in_proj.out_features or mixer.out_proj.in_features != heads.size:
        return "in_proj / out_proj sizes do not match the SSM's heads and groups"
    head_idx = segment_indices([Segment(num_heads, 1, heads.kept)], rank)
    params = [(mixer.params[name], 0, head_idx) for name in ("A_log", "D", "dt_bias")]
    for target in mixer.params.values():
        if tuple(gm.get_parameter(target).shape) != (num_heads,):
            return f"{target} is not one value per head"
    conv_idx = segment_indices(conv_segments, rank)
    params.append((str(mixer.conv.args[1].target), 0, conv_idx))
    if len(mixer.conv.args) > 2 and isinstance(mixer.conv.args[2], Node):
        params.append((str(mixer.conv.args[2].target), 0, conv_idx))
    if mixer.norm is not None:
        params.append((str(mixer.norm.args[1].target), 0, segment_indices([heads], rank)))
    local_heads, local_groups = len(heads.kept[rank]), len(groups.kept[rank])
    literals = {
        mixer.in_split.name: _local_split(
            mixer.in_split, mixer.in_roles, conv_segments, unit, rank
        ),
        mixer.conv_split.name: (
            mixer.conv_split.args[0],
            [unit[role].local_size(rank) for role in mixer.conv_roles],
            *mixer.conv_split.args[2:],
        ),
    }
    heads_map = {num_heads: local_heads}
    for role, nodes in mixer.views.items():
        if role in ("B", "C"):
            last, second = {groups.size: groups.local_size(rank)}, {num_groups: local_groups}
        elif role == "dt":
            last, second = heads_map, {}
        else:
            last, second = {heads.size: heads.local_size(rank)}, heads_map
        for node in nodes:
            literals[node.name] = _rewrite_shape(node, last, second)
    in_split = WeightSplit(
        node=mixer.in_proj.node.name,
        module=mixer.in_proj.module,
        weight=mixer.in_proj.weight,
        bias=mixer.in_proj.bias,
        strategy="mamba",
        source=source,  # type: ignore[arg-type]
        segments=in_segments,
        note=note,
    )
    out_split = WeightSplit(
        node=mixer.out_proj.node.name,
        module=mixer.out_proj.module,
        weight=mixer.out_proj.weight,
        bias=mixer.out_proj.bias,
        strategy="rowwise",
        source=source,  # type: ignore[arg-type]
        segments=[even_segment(num_heads, head_dim, world)],
    )
    sizes = {"heads": local_heads, "groups": local_groups}
    layer = SsmLayer(mixer.module, params, literals, sharded_norm, note, sizes, source)
    return in_split, out_split, layer


def _local_split(split: Node, roles: list[str], conv_segments, unit, rank: int) -> tuple:
    sizes = [
        sum(s.local_size(rank) for s in conv_segments)
        if role == "xbc"
        else unit[role].local_size(rank)
        for role in roles
    ]
    return (split.args[0], sizes, *split.args[2:])


def _mixers(gm: GraphModule) -> list[tuple[Node, _Mixer | str]]:
    """Every ``torch_ssm`` node with its traced mixer, or why it could not be traced."""
    found: list[tuple[Node, _Mixer | str]] = []
    for node in gm.graph.nodes:
        if op_name(node) == "torch_ssm":
            try:
                found.append((node, _trace_mixer(gm, node)))
            except _Unrecognized as exc:
                found.append((node, str(exc)))
    return found


def _module_of(gm: GraphModule, ssm: Node, mixer: _Mixer | str) -> str:
    if isinstance(mixer, _Mixer):
        return mixer.module
    stack = ssm.meta.get("nn_module_stack") or {}
    paths = [str(path) for path, _ in stack.values()]
    return paths[-1] if paths else ssm.name


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
    for ssm, mixer in _mixers(gm):
        module = _module_of(gm, ssm, mixer)
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
    for _, mixer in _mixers(gm):
        if isinstance(mixer, _Mixer) and mixer.in_proj.node.name not in claimed:
            plan.unsharded[mixer.module] = ADD_SSM_HINT


def ssm_from_tp_plan(
    gm: GraphModule, plan: ShardingPlan, tp_plan: dict[str, str], claimed: set[str]
) -> None:
    """The manual plan's ``mamba`` entries: each pattern must match a Mamba mixer."""
    patterns = [pattern for pattern, strategy in tp_plan.items() if strategy == "mamba"]
    mixers = sorted({_module_of(gm, ssm, mixer) for ssm, mixer in _mixers(gm)})
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
