"""fuse_gemms: linears that read the same input become one GEMM on concatenated weights."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.fx import GraphModule, Node

from ....utils.logger import logger
from ...base import BaseTransform
from ...facts import EXPORTED_GRAPH, INPUTS_ON_DEVICE, WEIGHTS_LOADED
from ...graph_utils import get_attr_value, is_op
from ...interface import SharedConfig, Stages, TransformInfo
from ...pattern import propagate_meta
from ...registry import TransformRegistry
from ._backends import UNCHANGED

aten = torch.ops.aten
ad = torch.ops.auto_deploy


@dataclass
class _Linear:
    node: Node
    weight: Node  # get_attr
    bias: Node | None  # get_attr


class ConcatOnLoad:
    """``load_state_dict`` pre-hook: rebuild a fused parameter from the original keys.

    A state dict with every source key (the checkpoint the model came from) gets the fused key
    (their concatenation along dim 0) instead; one that already has the fused key (a state dict
    of the fused model) is left alone. Picklable, so fused modules deep-copy and save.
    """

    def __init__(self, fused_key: str, source_keys: list[str]):
        self.fused_key = fused_key
        self.source_keys = list(source_keys)

    def __call__(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        sources = [prefix + key for key in self.source_keys]
        if all(key in state_dict for key in sources):
            state_dict[prefix + self.fused_key] = torch.cat([state_dict.pop(k) for k in sources])


def _linear_of(gm: GraphModule, node: Node) -> _Linear | None:
    if not is_op(node, (aten.linear.default, ad.torch_linear_simple)):
        return None
    args = list(node.args) + [None] * (3 - len(node.args))
    x, weight, bias = args[0], args[1], node.kwargs.get("bias", args[2])
    if not isinstance(x, Node) or not isinstance(weight, Node) or weight.op != "get_attr":
        return None
    if bias is not None and (not isinstance(bias, Node) or bias.op != "get_attr"):
        return None
    value = get_attr_value(gm, weight)
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        return None
    return _Linear(node, weight, bias)


def _split_target(target: str) -> tuple[str, str]:
    module, _, attr = target.rpartition(".")
    return module, attr


def _fused_names(gm: GraphModule, members: list[_Linear]) -> tuple[str, str]:
    """(parent module path, new child name), e.g. ``model.layers.0.self_attn`` and
    ``fused_q_proj_k_proj_v_proj``."""
    modules = [_split_target(str(m.weight.target))[0] for m in members]
    parents = [path.rpartition(".")[0] for path in modules]
    parent = os.path.commonprefix([p + "." for p in parents]).rpartition(".")[0]
    leaves = [path[len(parent) :].strip(".").replace(".", "_") for path in modules]
    name, index = "fused_" + "_".join(leaves), 1
    holder = gm.get_submodule(parent) if parent else gm
    while hasattr(holder, name if index == 1 else f"{name}_{index}"):
        index += 1
    return parent, name if index == 1 else f"{name}_{index}"


def _delete_attr(gm: GraphModule, target: str) -> None:
    """Delete a parameter, then its module if nothing is left in it."""
    module_path, attr = _split_target(target)
    module = gm.get_submodule(module_path) if module_path else gm
    delattr(module, attr)
    if (
        module_path
        and not any(True for _ in module.children())
        and not module._parameters
        and not module._buffers
    ):
        parent_path, _, leaf = module_path.rpartition(".")
        delattr(gm.get_submodule(parent_path) if parent_path else gm, leaf)


def _fuse_group(gm: GraphModule, members: list[_Linear]) -> list[Node]:
    """Rewrite one group; returns the new nodes."""
    graph = gm.graph
    weights = [get_attr_value(gm, m.weight) for m in members]
    parent, child = _fused_names(gm, members)
    # The fused parameter behaves like the ones it replaces (autograd flag included).
    requires_grad = weights[0].requires_grad
    holder = nn.Module()
    holder.weight = nn.Parameter(torch.cat([w.detach() for w in weights]), requires_grad)
    has_bias = members[0].bias is not None
    if has_bias:
        biases = [get_attr_value(gm, m.bias).detach() for m in members]
        holder.bias = nn.Parameter(torch.cat(biases), requires_grad)
    (gm.get_submodule(parent) if parent else gm).add_module(child, holder)
    prefix = f"{parent}.{child}" if parent else child
    gm._register_load_state_dict_pre_hook(
        ConcatOnLoad(f"{prefix}.weight", [str(m.weight.target) for m in members])
    )
    if has_bias:
        gm._register_load_state_dict_pre_hook(
            ConcatOnLoad(f"{prefix}.bias", [str(m.bias.target) for m in members])
        )

    first = members[0].node  # members are in graph order
    with graph.inserting_before(first):
        new_nodes = [graph.get_attr(f"{prefix}.weight")]
        if has_bias:
            new_nodes.append(graph.get_attr(f"{prefix}.bias"))
        fused = graph.call_function(aten.linear.default, (members[0].node.args[0], *new_nodes))
        new_nodes.append(fused)
        start = 0
        for member, weight in zip(members, weights):
            end = start + weight.shape[0]
            piece = graph.call_function(aten.slice.Tensor, (fused, -1, start, end))
            piece.meta.update({k: v for k, v in member.node.meta.items() if k != "val"})
            new_nodes.append(piece)
            member.node.replace_all_uses_with(piece)
            start = end
    for member in members:
        graph.erase_node(member.node)
        for attr in (member.weight, member.bias):
            if attr is not None:
                target = str(attr.target)
                graph.erase_node(attr)
                _delete_attr(gm, target)
    return new_nodes


@TransformRegistry.register("fuse_gemms")
class FuseGemms(BaseTransform):
    """Linears that share their input become one GEMM on concatenated weights, then slices.

    before: ``q = linear(x, Wq, bq); k = linear(x, Wk, bk); v = linear(x, Wv, bv)``
    after:  ``qkv = linear(x, W_qkv, b_qkv)`` with ``W_qkv = cat([Wq, Wk, Wv])`` (parameter
            ``<parent>.fused_q_proj_k_proj_v_proj.weight``), ``q = slice(qkv, -1, 0, nq)``,
            ``k = slice(qkv, -1, nq, nq + nk)``, ...
    Grouped by (input, bias or not, weight dtype and device); a weight used anywhere else (tied)
    is left alone. The old parameters are deleted; a ``load_state_dict`` pre-hook keeps the
    original checkpoint keys loadable (it concatenates them into the fused parameter).
    """

    stage = Stages.POST_LOAD_FUSION
    requires = (EXPORTED_GRAPH, WEIGHTS_LOADED)
    uses = (INPUTS_ON_DEVICE,)

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        if not isinstance(gm, GraphModule):
            return gm, UNCHANGED
        uses = Counter(id(t) for _, t in gm.named_parameters(remove_duplicate=False))
        uses.update(id(t) for _, t in gm.named_buffers(remove_duplicate=False))
        get_attr_uses = Counter(str(n.target) for n in gm.graph.nodes if n.op == "get_attr")
        groups: dict[tuple, list[_Linear]] = defaultdict(list)
        for node in gm.graph.nodes:
            linear = _linear_of(gm, node)
            if linear is None:
                continue
            attrs = [a for a in (linear.weight, linear.bias) if a is not None]
            if any(
                len(a.users) != 1
                or get_attr_uses[str(a.target)] != 1
                or uses[id(get_attr_value(gm, a))] != 1
                for a in attrs
            ):
                continue  # shared (tied) weight: fusing would duplicate it
            weight = get_attr_value(gm, linear.weight)
            key = (
                linear.node.args[0],
                linear.bias is not None,
                weight.dtype,
                weight.device,
                weight.shape[1],
            )
            groups[key].append(linear)
        fused_groups = [members for members in groups.values() if len(members) >= 2]
        if not fused_groups:
            return gm, UNCHANGED
        new_nodes: list[Node] = []
        for members in fused_groups:
            new_nodes += _fuse_group(gm, members)
        logger.info(
            "fused %d groups of linears (%d GEMMs -> %d)",
            len(fused_groups),
            sum(len(g) for g in fused_groups),
            len(fused_groups),
        )
        has_meta = propagate_meta(gm, new_nodes)
        return gm, TransformInfo(
            num_matches=len(fused_groups), is_clean=False, has_valid_shapes=has_meta
        )
