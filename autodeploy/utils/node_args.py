"""Arguments of an FX call node by schema name (export passes them by position or keyword)."""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import Node


def bound_args(node: Node) -> dict[str, Any]:
    """All arguments of an op node by schema name, defaults filled in; a required argument the
    node lacks is ``None``. Targets without a schema give ``{"0": arg0, ..., **kwargs}``."""
    target = node.target
    if isinstance(target, torch._ops.OpOverloadPacket):  # e.g. torch.ops.auto_deploy.x
        target = target.default
    schema = getattr(target, "_schema", None)
    if schema is None:
        return {**{str(i): a for i, a in enumerate(node.args)}, **node.kwargs}
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    return out


def node_val(value: Any) -> Any:
    """The example (fake) value recorded on a graph node; ``None`` for anything that is not a
    node or a node without shape metadata. The one helper for "the value of a node"."""
    return value.meta.get("val") if isinstance(value, Node) else None
