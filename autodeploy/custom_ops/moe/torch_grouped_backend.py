"""``torch_moe_grouped``: ``torch_moe`` computing each expert on its own tokens only.

The CPU backend of ``fuse_moe``. Same contract and result as ``torch_moe`` (see
``torch_backend.py``), but instead of running every expert on every token it groups the
(token, expert) pairs by expert and runs each expert's two GEMMs on its group: the work of
top-k experts, not of all of them. Pairs whose expert id is outside ``[0, E)`` (expert
parallelism: another rank's expert) are skipped without any compute. The group sizes depend
on the routing (data-dependent shapes), which is fine here: the op runs after export, as one
opaque node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .torch_backend import activate, is_gated


@torch.library.custom_op("auto_deploy::torch_moe_grouped", mutates_args=())
def torch_moe_grouped(
    hidden_states: Tensor,
    selected_experts: Tensor,
    routing_weights: Tensor,
    gate_up_weight: Tensor,
    down_weight: Tensor,
    activation: str = "silu",
) -> Tensor:
    """``torch_moe`` with per-expert GEMMs over the tokens routed to each expert."""
    top_k = selected_experts.shape[1]
    num_experts = gate_up_weight.shape[0]
    gated = is_gated(gate_up_weight, down_weight)
    flat_experts = selected_experts.reshape(-1)  # pair p = token p // K, slot p % K
    # Ids outside [0, E) (other ranks' experts) go to bucket E, sorted last and never computed.
    local = (flat_experts >= 0) & (flat_experts < num_experts)
    flat_experts = torch.where(local, flat_experts, num_experts)
    order = torch.argsort(flat_experts, stable=True)
    counts = torch.bincount(flat_experts, minlength=num_experts + 1)[:num_experts].tolist()
    pair_out = hidden_states.new_zeros(flat_experts.shape[0], hidden_states.shape[1])
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        pairs = order[start : start + count]
        start += count
        tokens = hidden_states[pairs // top_k]
        intermediate = activate(F.linear(tokens, gate_up_weight[expert]), activation, gated)
        pair_out[pairs] = F.linear(intermediate, down_weight[expert])
    weights = routing_weights.reshape(-1, 1).to(pair_out.dtype)
    return (pair_out * weights).view(-1, top_k, hidden_states.shape[1]).sum(dim=1)


@torch_moe_grouped.register_fake
def _torch_moe_grouped_fake(
    hidden_states, selected_experts, routing_weights, gate_up_weight, down_weight, activation="silu"
):
    return hidden_states.new_empty(hidden_states.shape)
