"""Find the parts of each exported Mamba-2 mixer around a ``torch_ssm`` node (see ``_ssm.py``).

From the scan's inputs back to ``in_proj`` (through the conv and the two splits) and from its
output forward through the gated norm to ``out_proj``; a mixer laid out differently is reported
with the reason instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.fx import GraphModule, Node

from ._graph import LinearInfo, linear_info, shape_of
from ._heuristic import op_name

_VIEWS = ("view", "reshape", "_unsafe_view", "contiguous", "to", "_to_copy")


class MixerNotRecognized(Exception):
    """The mixer around a ``torch_ssm`` node does not have the expected layout."""


@dataclass
class MambaMixer:
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
        raise MixerNotRecognized("an SSM input is not computed in the graph")
    return node


def _chunk(node: Node, split: Node | None = None) -> tuple[Node, int]:
    """(split_with_sizes node, index) of a getitem of a split."""
    if op_name(node) != "getitem" or op_name(node.args[0]) != "split_with_sizes":
        raise MixerNotRecognized(f"{node.name} is not a chunk of a split_with_sizes")
    if split is not None and node.args[0] is not split:
        raise MixerNotRecognized(f"{node.name} comes from another split")
    return node.args[0], int(node.args[1])


def _param(node: object) -> str:
    """The parameter behind A (``-exp(A_log)``), D or dt_bias."""
    while isinstance(node, Node) and op_name(node) in (*_VIEWS, "exp", "neg"):
        node = node.args[0]
    if not isinstance(node, Node) or node.op != "get_attr":
        raise MixerNotRecognized("A, D or dt_bias is not a parameter")
    return str(node.target)


def _roles(split: Node, by_index: dict[int, str], what: str) -> list[str]:
    count = len(split.args[1])
    if sorted(by_index) != list(range(count)):
        raise MixerNotRecognized(f"the {what} split has chunks the mixer does not use as expected")
    return [by_index[i] for i in range(count)]


def trace_mixer(gm: GraphModule, ssm: Node) -> MambaMixer:
    x_arg, a_arg, b_arg, c_arg, d_arg, dt_arg, dt_bias_arg = ssm.args[:7]
    views: dict[str, list[Node]] = {role: [] for role in ("x", "B", "C", "dt", "y")}
    conv_split, ix = _chunk(_back_through_views(x_arg, views["x"]))
    _, ib = _chunk(_back_through_views(b_arg, views["B"]), conv_split)
    _, ic = _chunk(_back_through_views(c_arg, views["C"]), conv_split)
    conv = _back_through_views(conv_split.args[0], [])
    while op_name(conv) in ("silu",):
        conv = conv.args[0]
    if op_name(conv) != "torch_causal_conv1d":
        raise MixerNotRecognized("x, B and C do not come from one torch_causal_conv1d")
    in_split, ixbc = _chunk(_back_through_views(conv.args[0], []))
    _, idt = _chunk(_back_through_views(dt_arg, views["dt"]), in_split)
    in_roles = {ixbc: "xbc", idt: "dt"}
    in_proj = linear_info(gm, _back_through_views(in_split.args[0], []))
    node, norm = ssm, None
    while True:  # forward: views, the gated norm, views, out_proj
        if len(node.users) != 1:
            raise MixerNotRecognized("the SSM output has several users")
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
        raise MixerNotRecognized("in_proj / out_proj are not linears with parameter weights")
    if shape_of(x_arg) is None or shape_of(b_arg) is None:
        raise MixerNotRecognized("the SSM inputs have no shape metadata")
    if norm is not None and not isinstance(norm.args[4] if len(norm.args) > 4 else None, int):
        raise MixerNotRecognized("the gated norm's group_size is not a literal")
    return MambaMixer(
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


def trace_mixers(gm: GraphModule) -> list[tuple[Node, MambaMixer | str]]:
    """Every ``torch_ssm`` node with its traced mixer, or why it could not be traced."""
    found: list[tuple[Node, MambaMixer | str]] = []
    for node in gm.graph.nodes:
        if op_name(node) == "torch_ssm":
            try:
                found.append((node, trace_mixer(gm, node)))
            except MixerNotRecognized as exc:
                found.append((node, str(exc)))
    return found


def mixer_module(gm: GraphModule, ssm: Node, mixer: MambaMixer | str) -> str:
    if isinstance(mixer, MambaMixer):
        return mixer.module
    stack = ssm.meta.get("nn_module_stack") or {}
    paths = [str(path) for path, _ in stack.values()]
    return paths[-1] if paths else ssm.name
