"""fuse_mamba_a_log: the Mamba-2 mixer's ``A = -exp(A_log.float())`` becomes a precomputed
parameter ``A_fused`` (two elementwise ops and a cast less per layer and step)."""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from ...base import BaseTransform
from ...facts import CANONICAL_SSM, EXPORTED_GRAPH, WEIGHTS_LOADED
from ...graph_utils import is_op
from ...interface import SharedConfig, Stages, TransformConfig, TransformInfo
from ...registry import TransformRegistry

aten = torch.ops.aten
# Casts export may leave between the parameter and exp() (``.float()`` on a half model).
_CASTS = (aten._to_copy.default, aten.to.dtype, aten.alias.default)


def _a_log_param(exp_node: Node) -> Node | None:
    """The get_attr node feeding ``exp`` through float32 casts only, or None."""
    source = exp_node.args[0]
    while isinstance(source, Node) and is_op(source, _CASTS):
        dtype = source.kwargs.get("dtype", source.args[1] if len(source.args) > 1 else None)
        if dtype not in (None, torch.float32):
            return None
        source = source.args[0]
    if isinstance(source, Node) and source.op == "get_attr" and source.target.endswith("A_log"):
        return source
    return None


@TransformRegistry.register("fuse_mamba_a_log")
class FuseMambaALog(BaseTransform):
    """Precompute ``-exp(A_log)`` per Mamba layer.

    before: ``A = neg(exp(_to_copy(get_attr("...mixer.A_log"), float32)))``
    after:  ``A = get_attr("...mixer.A_fused")`` (float32 parameter; ``A_log`` removed when
            nothing else reads it)
    """

    stage = Stages.POST_LOAD_FUSION
    requires = (EXPORTED_GRAPH, WEIGHTS_LOADED)
    uses = (CANONICAL_SSM,)

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return TransformConfig

    def _apply(self, gm: GraphModule, cm, factory, shared_config: SharedConfig):
        fused = 0
        for neg in list(gm.graph.nodes):
            if not is_op(neg, aten.neg.default) or not isinstance(neg.args[0], Node):
                continue
            exp = neg.args[0]
            param_node = _a_log_param(exp) if is_op(exp, aten.exp.default) else None
            if param_node is None or len(exp.users) != 1:
                continue
            owner_path, _, _ = param_node.target.rpartition(".")
            owner = gm.get_submodule(owner_path)
            with torch.no_grad():
                value = -torch.exp(gm.get_parameter(param_node.target).float())
            owner.register_parameter("A_fused", torch.nn.Parameter(value, requires_grad=False))
            with gm.graph.inserting_before(neg):
                a_fused = gm.graph.get_attr(f"{owner_path}.A_fused" if owner_path else "A_fused")
            a_fused.meta.update(neg.meta)
            neg.replace_all_uses_with(a_fused)
            gm.graph.erase_node(neg)
            fused += 1
        if not fused:
            return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)
        gm.graph.eliminate_dead_code()
        for node in [n for n in gm.graph.nodes if n.op == "get_attr" and not n.users]:
            gm.graph.erase_node(node)
        gm.delete_all_unused_submodules()
        _drop_unused_a_log(gm)
        return gm, TransformInfo(num_matches=fused, is_clean=False, has_valid_shapes=True)


def _drop_unused_a_log(gm: GraphModule) -> None:
    """Remove ``A_log`` parameters the graph no longer reads (their value lives in A_fused)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters(remove_duplicate=False)):
        if name.endswith("A_log") and name not in used:
            owner_path, _, leaf = name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            del owner._parameters[leaf]
