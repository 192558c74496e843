"""``torch_moe``: the canonical mixture-of-experts op (routed experts only) and its specification.

Argument contract (shared by every MoE backend, ``torch_moe_grouped`` and ``triton_moe_fused``):

- ``hidden_states`` ``[T, H]``: the tokens (flattened batch).
- ``selected_experts`` ``[T, K]`` (integer): the top-k expert ids the router picked per token.
  K is the op's top-k. An id outside ``[0, E)`` selects no expert: that (token, slot) pair
  contributes nothing (expert parallelism, below).
- ``routing_weights`` ``[T, K]``: the weight of each picked expert (already normalized, biased,
  scaled, as the model's router defines it; routing stays in the graph as ordinary ops).
- ``gate_up_weight`` ``[E, 2 * I, H]``: per expert, rows ``[0, I)`` are the gate projection and
  rows ``[I, 2I)`` the up projection (Hugging Face's ``experts.gate_up_proj``). Ungated experts
  (Nemotron-H: ``up -> act -> down``, no gate projection) pass the up projection alone,
  ``[E, I, H]``; the op tells the two apart by ``down_weight``'s ``I`` (``is_gated``).
- ``down_weight`` ``[E, H, I]``: per expert, the down projection (``experts.down_proj``).
- ``activation``: the gate activation (ungated: the up projection's), one of ``ACTIVATIONS``.

Output ``[T, H]`` (dtype of ``hidden_states``)::

    out[t] = sum_k routing_weights[t, k] * expert_{selected_experts[t, k]}(hidden_states[t])
    expert_e(x) = down_weight[e] @ (act(gate_e @ x) * (up_e @ x))      # gated
    expert_e(x) = down_weight[e] @ act(up_e @ x)                        # ungated

Expert parallelism: the expert dimension is dim 0 of both weights and nothing else, so a rank can
hold a contiguous slice of experts ``[start, stop)`` (``E = stop - start`` locally) and pass
``selected_experts - start``: the pairs routed to other ranks' experts fall outside ``[0, E)``
and cost no expert compute in the grouped backends (the reference masks them). Summing the
ranks' partial outputs (one all-reduce) gives the full result. Tensor parallelism within an
expert splits ``I``: the gate rows and the up rows of ``gate_up_weight`` separately (dim 1;
ungated: the up rows), ``down_weight`` on dim 2; the partial outputs again add up.

The reference below computes every expert for every token and keeps only the routed results
(a dense one-hot combine): slow, but free of data-dependent shapes and easy to check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),  # Nemotron-H's squared ReLU
}


def is_gated(gate_up_weight: Tensor, down_weight: Tensor) -> bool:
    """Gated experts (gate and up rows, ``[E, 2I, H]``), not ungated (up rows, ``[E, I, H]``)."""
    return gate_up_weight.shape[1] != down_weight.shape[2]


def activate(projected: Tensor, activation: str, gated: bool) -> Tensor:
    """The expert intermediate from the input projection ``[..., 2I]`` (gated: gate | up) or
    ``[..., I]`` (ungated: up)."""
    if not gated:
        return ACTIVATIONS[activation](projected)
    gate, up = projected.chunk(2, dim=-1)
    return ACTIVATIONS[activation](gate) * up


def check_moe_args(
    name: str,
    hidden_states: Tensor,
    selected_experts: Tensor,
    routing_weights: Tensor,
    gate_up_weight: Tensor,
    down_weight: Tensor,
    activation: str,
) -> None:
    """Raise ValueError naming the argument that breaks the contract above."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"{name}: activation {activation!r} is not one of {sorted(ACTIVATIONS)}.")
    if hidden_states.dim() != 2:
        raise ValueError(
            f"{name}: hidden_states must be [tokens, hidden], got {hidden_states.shape}."
        )
    tokens, hidden = hidden_states.shape
    if selected_experts.dim() != 2 or selected_experts.shape[0] != tokens:
        raise ValueError(
            f"{name}: selected_experts must be [{tokens}, top_k], got {selected_experts.shape}."
        )
    if routing_weights.shape != selected_experts.shape:
        raise ValueError(
            f"{name}: routing_weights {routing_weights.shape} must match selected_experts "
            f"{selected_experts.shape}."
        )
    experts, rows, weight_hidden = gate_up_weight.shape
    if weight_hidden != hidden:
        raise ValueError(
            f"{name}: gate_up_weight must be [experts, 2 * intermediate (gated) or intermediate, "
            f"{hidden}], got {gate_up_weight.shape}."
        )
    inter = down_weight.shape[-1]
    if down_weight.shape[:2] != (experts, hidden) or rows not in (inter, 2 * inter):
        raise ValueError(
            f"{name}: down_weight must be [{experts}, {hidden}, intermediate] with gate_up_weight "
            f"rows 2 * intermediate (gated) or intermediate (ungated); got {down_weight.shape} "
            f"and {gate_up_weight.shape}."
        )


@torch.library.custom_op("auto_deploy::torch_moe", mutates_args=())
def torch_moe(
    hidden_states: Tensor,
    selected_experts: Tensor,
    routing_weights: Tensor,
    gate_up_weight: Tensor,
    down_weight: Tensor,
    activation: str = "silu",
) -> Tensor:
    """Routed MLP experts (gated or ungated); see the module docstring for the contract."""
    num_experts = gate_up_weight.shape[0]
    local = (selected_experts >= 0) & (selected_experts < num_experts)  # [T, K]
    # combine[t, e]: the routing weight token t gives expert e (0 where e was not picked).
    one_hot = F.one_hot(torch.where(local, selected_experts, 0).long(), num_experts)  # [T, K, E]
    weights = torch.where(local, routing_weights, 0)  # pairs for no local expert add nothing
    combine = (one_hot * weights.unsqueeze(-1)).sum(dim=1)  # [T, E]
    gate_up = torch.einsum("th,eoh->teo", hidden_states, gate_up_weight)  # [T, E, 2I or I]
    gated = is_gated(gate_up_weight, down_weight)
    intermediate = activate(gate_up, activation, gated)  # [T, E, I]
    expert_out = torch.einsum("tei,ehi->teh", intermediate, down_weight)  # [T, E, H]
    out = (expert_out * combine.to(expert_out.dtype).unsqueeze(-1)).sum(dim=1)  # [T, H]
    return out.to(hidden_states.dtype)


@torch_moe.register_fake
def _torch_moe_fake(
    hidden_states, selected_experts, routing_weights, gate_up_weight, down_weight, activation="silu"
):
    return hidden_states.new_empty(hidden_states.shape)
