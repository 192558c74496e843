"""gather_logits_before_lm_head: compute logits only for the last token of each sequence."""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .... import custom_ops  # noqa: F401  (registers torch_gather_last_tokens)
from ...base import BaseTransform
from ...facts import CACHE_INTERFACE, EXPORTED_GRAPH, INPUTS_ON_DEVICE
from ...graph_utils import add_graph_input, is_op
from ...interface import SharedConfig, Stages, TransformInfo
from ...pattern import propagate_meta
from ...registry import TransformRegistry
from ._backends import UNCHANGED

aten = torch.ops.aten
ad = torch.ops.auto_deploy

LINEARS = (aten.linear.default, ad.torch_linear_simple)
# Ops that act on each token's logits on their own (soft-capping, scaling, casts): gathering
# the rows before them changes nothing for the rows that are kept.
_PER_TOKEN_OPS = (
    aten.mul.Tensor,
    aten.div.Tensor,
    aten.add.Tensor,
    aten.sub.Tensor,
    aten.tanh.default,
    aten.to.dtype,
    aten._to_copy.default,
    aten.clone.default,
    aten.contiguous.default,
    aten.alias.default,
)
GATHER_ARG = "cu_seqlen"


def _is_scalar_operand(value) -> bool:
    if not isinstance(value, Node):
        return True
    val = value.meta.get("val")
    return isinstance(val, torch.Tensor) and val.numel() == 1


def find_lm_head(gm: GraphModule) -> Node | None:
    """The linear that produces the logits: walk back from the graph output through per-token
    ops (each with a single user) to the first linear."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    node = output.args[0]
    if isinstance(node, (tuple, list)):
        node = node[0] if node else None
    while isinstance(node, Node) and len(node.users) == 1:
        if is_op(node, LINEARS):
            return node
        if not is_op(node, _PER_TOKEN_OPS) or not all(_is_scalar_operand(a) for a in node.args[1:]):
            return None
        node = node.args[0]
    return None


@TransformRegistry.register("gather_logits_before_lm_head")
class GatherLogitsBeforeLmHead(BaseTransform):
    """Only the last token of each sequence reaches the output head (the sampled tokens).

    before: ``logits = linear(h, W_lm_head)``                        h: [1, T, H] -> [1, T, V]
    after:  ``logits = linear(torch_gather_last_tokens(h, cu_seqlen), W_lm_head)``
            -> [1, B, V] for a batch with prefill, [B, 1, V] for a decode-only batch
    Adds the graph input ``cu_seqlen`` (the SequenceInfo argument, activated on ``cm.info``;
    shared with cached attention). Per-token ops after the head (soft-capping, scaling) stay.
    Off by default: the runtime's ``cm.info.gather_last_logits`` must first accept logits with
    one row per sequence (today it expects one row per token).
    """

    stage = Stages.POST_LOAD_FUSION
    requires = (EXPORTED_GRAPH, CACHE_INTERFACE)
    uses = (INPUTS_ON_DEVICE,)

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        if not isinstance(gm, GraphModule):
            return gm, UNCHANGED
        if any(is_op(n, ad.torch_gather_last_tokens) for n in gm.graph.nodes):
            return gm, UNCHANGED  # already gathered
        lm_head = find_lm_head(gm)
        if lm_head is None:
            self.report_problem(
                shared_config,
                "found no output head (a linear whose result reaches the graph output through "
                "per-token ops only): logits stay computed for every token.",
            )
            return gm, UNCHANGED
        if hasattr(gm, "validate_inputs"):  # torch.export's input check knows no new inputs
            gm.validate_inputs = False
        cm.info.activate_arg(GATHER_ARG)
        cu_seqlen = add_graph_input(gm, GATHER_ARG, cm.info.get_arg(GATHER_ARG))
        hidden = lm_head.args[0]
        with gm.graph.inserting_before(lm_head):
            gathered = gm.graph.call_function(
                ad.torch_gather_last_tokens.default, (hidden, cu_seqlen)
            )
        lm_head.replace_input_with(hidden, gathered)
        # The head and the ops after it now see fewer rows: their shapes are stale.
        propagate_meta(gm, [gathered])
        return gm, TransformInfo(num_matches=1, is_clean=False, has_valid_shapes=False)
