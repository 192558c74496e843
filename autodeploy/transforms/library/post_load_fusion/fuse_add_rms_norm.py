"""fuse_add_rms_norm: a residual add followed by RMSNorm of the sum becomes one kernel."""

from __future__ import annotations

import operator
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch.fx import GraphModule, Node

from ....custom_ops.op_backend import BackendRegistry
from ...base import BaseTransform
from ...graph_utils import is_op, node_val
from ...interface import SharedConfig, TransformConfig, TransformInfo
from ...pattern import propagate_meta
from ...registry import TransformRegistry
from ._backends import UNCHANGED, backend_description, check_backend_installed, node_backends

aten = torch.ops.aten
ad = torch.ops.auto_deploy


def _rmsnorm_ops() -> list:
    """Every op with ``torch_rmsnorm``'s semantics (the order of the fusions does not matter)."""
    names = ("torch_rmsnorm", "triton_rmsnorm", "flashinfer_rmsnorm")
    return [getattr(ad, name) for name in names if hasattr(ad, name)]


class FuseAddRMSNormConfig(TransformConfig):
    backend: Literal["auto", "triton", "torch"] = Field(
        default="auto",
        description=backend_description("the reference op torch_fused_add_rmsnorm"),
    )

    @field_validator("backend")
    @classmethod
    def _installed(cls, value: str) -> str:
        return check_backend_installed("rms_norm", value)


def _plain_add(node: Node) -> bool:
    """``a + b`` of two tensors of the result's shape and dtype (no broadcast, no promotion)."""
    if not is_op(node, aten.add.Tensor) or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
        return False
    out = node_val(node)
    vals = [node_val(a) for a in node.args]
    return isinstance(out, torch.Tensor) and all(
        isinstance(v, torch.Tensor) and v.shape == out.shape and v.dtype == out.dtype for v in vals
    )


def _hoist_above(weight: Node, add: Node, order: dict[Node, int]) -> bool:
    """Move the nodes that compute ``weight`` (e.g. Gemma's ``w.float() + 1``) above ``add`` so
    the fused op can take the add's place; False if the weight depends on the sum."""
    late, stack = set(), [weight]
    while stack:
        node = stack.pop()
        if node is add:
            return False
        if node in late or order[node] < order[add]:
            continue
        late.add(node)
        stack.extend(node.all_input_nodes)
    for node in sorted(late, key=order.__getitem__):
        add.prepend(node)
    return True


def _fuse_one(gm: GraphModule, norm: Node, fused_op, order: dict[Node, int]) -> bool | None:
    """Fuse ``norm`` with the add that feeds it; None if it cannot be, else whether the new
    nodes got their fake values."""
    if len(norm.args) != 3 or not isinstance(norm.args[0], Node) or not _plain_add(norm.args[0]):
        return None
    add = norm.args[0]
    weight = norm.args[1]
    if isinstance(weight, Node) and not _hoist_above(weight, add, order):
        return None
    with gm.graph.inserting_after(add):  # before every user of the sum
        fused = gm.graph.call_function(fused_op, (add.args[0], add.args[1], weight, norm.args[2]))
    with gm.graph.inserting_after(fused):
        normed = gm.graph.call_function(operator.getitem, (fused, 0))
    with gm.graph.inserting_after(normed):
        added = gm.graph.call_function(operator.getitem, (fused, 1))
    for new in (fused, normed, added):
        new.meta.update(
            {k: v for k, v in add.meta.items() if k in ("nn_module_stack", "stack_trace")}
        )
    has_meta = propagate_meta(gm, [fused, normed, added])
    norm.replace_all_uses_with(normed)
    gm.graph.erase_node(norm)
    add.replace_all_uses_with(added)
    gm.graph.erase_node(add)
    return has_meta


@TransformRegistry.register("fuse_add_rms_norm")
class FuseAddRMSNorm(BaseTransform):
    """Residual add + RMSNorm of the sum become one op that returns both (one kernel pass).

    before: ``s = add(x, residual); y = torch_rmsnorm(s, w, eps)``; ``s`` also feeds the next
            residual add
    after:  ``f = triton_fused_add_rmsnorm(x, residual, w, eps); y = f[0]``; ``f[1]`` replaces
            ``s`` everywhere
    Matches any RMSNorm op (reference, Triton or FlashInfer), so it may run before or after
    ``fuse_rmsnorm``. The op is functional (fresh outputs), so other users of the residual see
    exactly the values they saw before. ``backend: torch`` uses ``torch_fused_add_rmsnorm``.
    """

    config: FuseAddRMSNormConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return FuseAddRMSNormConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        norms = [
            n
            for n in gm.graph.nodes
            if is_op(n, _rmsnorm_ops()) and isinstance(n.args[0], Node) and _plain_add(n.args[0])
        ]
        if not norms:
            return gm, UNCHANGED
        backends = node_backends(
            self, "rms_norm", self.config.backend, gm, cm, norms, shared_config
        )
        fused, shapes_valid = 0, True
        for norm, backend in zip(norms, backends):
            fused_op = (
                BackendRegistry.get("rms_norm", backend).op("fused_add_rmsnorm")
                if backend
                else None
            )
            if fused_op is None:
                continue
            order = {n: i for i, n in enumerate(gm.graph.nodes)}
            result = _fuse_one(gm, norm, fused_op, order)
            if result is not None:
                fused, shapes_valid = fused + 1, shapes_valid and result
        return gm, TransformInfo(
            skipped=fused == 0,
            num_matches=fused,
            is_clean=fused == 0,
            has_valid_shapes=shapes_valid,
        )
