"""The model without its logit gather: logits for every token, for ``prompt_logprobs``.

``gather_logits_before_lm_head`` makes the output head see only the last token of each
sequence, which is all sampling needs. A request that asks for prompt log-probabilities needs
the logits of every prompt position from the same prefill pass, so steps that carry such a
request run a copy of the optimized graph whose ``torch_gather_last_tokens`` nodes are bypassed.
The copy shares every parameter and cache buffer with the model (nothing is duplicated) and runs
uncompiled; it is made once, on first use.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.fx import Graph, GraphModule

from .. import custom_ops  # noqa: F401  (registers torch_gather_last_tokens)

_GATHER = torch.ops.auto_deploy.torch_gather_last_tokens.default


def find_graph_module(model: Any, depth: int = 3) -> GraphModule | None:
    """The optimized GraphModule inside a compiled model: the model itself, or inside a
    CUDA-graph runner (``.model``) and/or a ``torch.compile`` wrapper (``._orig_mod``)."""
    if isinstance(model, GraphModule):
        return model
    if depth == 0 or model is None:
        return None
    for attribute in ("model", "_orig_mod"):
        found = find_graph_module(getattr(model, attribute, None), depth - 1)
        if found is not None:
            return found
    return None


def without_logit_gather(model: Any) -> GraphModule | None:
    """A module giving per-token logits (see the module docstring), or None when ``model`` has
    no GraphModule to copy. A graph without a gather is returned as it is."""
    gm = find_graph_module(model)
    if gm is None:
        return None
    if not any(n.op == "call_function" and n.target is _GATHER for n in gm.graph.nodes):
        return gm
    graph = Graph()
    graph._codegen = copy.deepcopy(gm.graph._codegen)  # keeps the exported pytree in/out specs
    value_map: dict[Any, Any] = {}
    output_value = graph.graph_copy(gm.graph, value_map)
    graph.output(output_value)
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is _GATHER:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    full = GraphModule(gm, graph)
    if hasattr(gm, "validate_inputs"):
        full.validate_inputs = False
    return full
