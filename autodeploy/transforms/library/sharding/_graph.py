"""Graph queries the sharding transforms share: linears, module paths, value shapes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from ...graph_utils import is_op, node_val

aten = torch.ops.aten
ad = torch.ops.auto_deploy

LINEAR_OPS = (aten.linear.default, ad.torch_linear_simple.default)


@dataclass
class LinearInfo:
    node: Node
    weight: str  # parameter target
    bias: str | None
    out_features: int
    in_features: int

    @property
    def module(self) -> str:
        return self.weight.rpartition(".")[0]


def linear_info(gm: GraphModule, node: Node) -> LinearInfo | None:
    """The linear ``node`` with a parameter weight (and bias), else None."""
    if not is_op(node, LINEAR_OPS):
        return None
    args = list(node.args) + [None] * (3 - len(node.args))
    weight, bias = args[1], node.kwargs.get("bias", args[2])
    if not isinstance(weight, Node) or weight.op != "get_attr":
        return None
    if bias is not None and (not isinstance(bias, Node) or bias.op != "get_attr"):
        return None
    value = gm.get_parameter(str(weight.target)) if _is_param(gm, weight) else None
    if value is None or value.dim() != 2:
        return None
    out_features, in_features = value.shape
    return LinearInfo(
        node, str(weight.target), str(bias.target) if bias else None, out_features, in_features
    )


def _is_param(gm: GraphModule, node: Node) -> bool:
    try:
        gm.get_parameter(str(node.target))
    except AttributeError:
        return False
    return True


def all_linears(gm: GraphModule) -> list[LinearInfo]:
    found = []
    for node in gm.graph.nodes:
        info = linear_info(gm, node)
        if info is not None:
            found.append(info)
    return found


def shape_of(node: object) -> tuple[int, ...] | None:
    value = node_val(node)
    if isinstance(value, torch.Tensor):
        return tuple(int(s) if isinstance(s, int) else -1 for s in value.shape)
    return None


def tied_names(gm: GraphModule) -> dict[str, list[str]]:
    """Parameter name -> every name of the same tensor (tied weights have several)."""
    by_id: dict[int, list[str]] = {}
    for name, param in gm.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    return {name: names for names in by_id.values() for name in names}
