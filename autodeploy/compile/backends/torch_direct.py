"""``torch-direct``: the graph run eagerly, with every autodeploy op called as a Python function.

An ``auto_deploy`` custom op called through the dispatcher costs tens of microseconds before its
body runs (arguments boxed and checked against the schema, mutation bookkeeping), about 100 us
for the cached-attention op's thirteen arguments on a laptop-class CPU. On CPU, where nothing
else hides that cost, it is a large part of a small model's decode step. This backend rewrites
each ``call_function`` node whose target is an ``auto_deploy`` op with a plain Python
implementation (``torch.library.custom_op``'s own function) to call that function directly;
aten ops and ops without one stay as they are. The results are the same: the function is the
op's implementation on every device without a device-specific kernel, which is why the backend
is CPU-only.

It also binds every weight the graph reads to a flat attribute of the module (``bind_weights``),
so a step reads ``self._w12`` instead of walking ``self.model.layers[0].self_attn.o_proj.weight``
through ``nn.Module.__getattr__`` for each weight of each layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.fx import GraphModule

from ...transforms.graph_utils import DIRECT_CALL_OF
from ...utils.logger import logger
from ..registry import CompileBackendRegistry, CompileBackendUnavailableError, CompilerBackend

NAMESPACE = "auto_deploy"


def python_implementation(target: Any) -> Callable[..., Any] | None:
    """The Python function behind an ``auto_deploy`` op made with ``torch.library.custom_op``
    (None for any other target, or an op with a device-specific kernel)."""
    if isinstance(target, torch._ops.OpOverloadPacket):
        target = target.default
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != NAMESPACE:
        return None
    from torch._library.custom_ops import OPDEFS  # where custom_op keeps its definitions

    opdef = OPDEFS.get(target._schema.name)
    device_kernels = [key for key in getattr(opdef, "_backend_fns", {}) if key is not None]
    if opdef is None or device_kernels:
        return None
    return getattr(opdef, "_init_fn", None)


def call_ops_directly(gm: GraphModule) -> int:
    """Retarget every ``auto_deploy`` op node that has a Python implementation; return how many."""
    count = 0
    for node in gm.graph.nodes:
        function = python_implementation(node.target) if node.op == "call_function" else None
        if function is not None:
            op = node.target
            node.meta[DIRECT_CALL_OF] = op.default if hasattr(op, "default") else op
            node.target = function
            count += 1
    if count:
        gm.recompile()
    return count


def bind_weights(gm: GraphModule) -> int:
    """Point every ``get_attr`` node of a nested parameter or buffer at a flat alias kept in the
    module's instance dict (the same tensor object, found by plain attribute lookup, not
    ``nn.Module.__getattr__``); return how many. In-place weight updates (``load_state_dict``,
    ``.to()``) reach the aliases; a parameter object replaced after compilation would not, and
    nothing does that after the compile stage."""
    aliases: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr" or "." not in node.target:
            continue
        if node.target not in aliases:
            value = _weight(gm, node.target)
            if value is None:
                continue  # a submodule or a plain attribute: left as it is
            alias = f"_w{len(aliases)}_{node.target.replace('.', '_')}"
            gm.__dict__[alias] = value
            aliases[node.target] = alias
        node.target = aliases[node.target]
    if aliases:
        gm.recompile()
    return len(aliases)


def _weight(gm: GraphModule, target: str) -> torch.Tensor | None:
    for getter in (gm.get_parameter, gm.get_buffer):
        try:
            return getter(target)
        except AttributeError:
            pass
    return None


@CompileBackendRegistry.register("torch-direct")
class TorchDirectBackend(CompilerBackend):
    """The eager graph without a dispatcher round trip per autodeploy op (the CPU default)."""

    def compile(self) -> nn.Module:
        device = self.cm.device if self.cm is not None else None
        if device is not None and torch.device(device).type != "cpu":
            raise CompileBackendUnavailableError(
                f"torch-direct runs autodeploy ops as Python functions, which is only right on "
                f"CPU (the model is on {device}); use torch-cudagraph or torch-simple there."
            )
        if not isinstance(self.model, GraphModule):
            raise CompileBackendUnavailableError(
                "torch-direct rewrites an exported GraphModule; this model is a "
                f"{type(self.model).__name__}. Use torch-simple."
            )
        count = call_ops_directly(self.model)
        bound = bind_weights(self.model)
        logger.debug(
            "torch-direct: %d autodeploy op calls made direct, %d weights bound", count, bound
        )
        return self.model
