"""Expert parallelism (EP) and EP x TP for the canonical MoE op ``torch_moe``.

Detection (``detect_moe``, run by ``detect_sharding`` when ``ep`` is in ``sharding_dims``):
each ``torch_moe`` node whose stacked weights are parameters becomes one ``ExpertSplit``.
The ranks form a grid ``{ep: G, tp: T}`` (``process_grid``; without one, or when its product is
not the world size, ``G = world_size, T = 1``), last dimension stride one: ranks
``[g*T, (g+1)*T)`` are EP group ``g``. Group ``g`` holds experts ``[g*E/G, (g+1)*E/G)``; inside
it, each expert's intermediate dim ``I`` is split ``T`` ways (gate and up rows of
``gate_up_weight`` separately, or the up rows of ungated experts; ``down_weight`` by columns).
Routing (the router linear, softmax, top-k) stays whole and runs on every rank; the router is
listed as replicated by choice.

Rewrite (``apply_expert_split``, run by the executor)::

    out = torch_moe(x, selected, weights, gate_up[E, 2I, H], down[E, H, I], act)

becomes, on a rank of group ``g`` holding experts ``[start, stop)``::

    local = sub(selected, start)            # other groups' experts fall outside [0, E/G)
    out = torch_dist_all_reduce(torch_moe(x, local, weights,
                                          gate_up[E/G, 2I/T, H], down[E/G, H, I/T], act))

``torch_moe`` and its backends give ids outside ``[0, E_local)`` no compute and a zero result
(see ``custom_ops/moe/torch_backend.py``), so each rank computes only its experts' share and
ONE all-reduce over the whole world sums the partial outputs (EP groups and TP slices alike).

Weights: the stacked parameters are replaced by local ones on the meta device. A stacked
checkpoint tensor is sliced by load pre-hooks (experts first, recorded for the lazy safetensors
reader; then the ``I`` slice); per-expert checkpoint tensors go through the expert stacker of
``models/moe_checkpoint.py``, told by ``expert_range`` / ``expert_slices`` on the experts module
which experts and which ``I`` rows or columns this rank keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from ._graph import all_linears, linear_info
from ._heuristic import op_name
from ._plan import ShardingPlan
from ._slicing import shard_parameter

ad = torch.ops.auto_deploy
aten = torch.ops.aten

MOE_OPS = ("torch_moe", "torch_moe_grouped", "triton_moe_fused")
ROUTER_REASON = "router: replicated (every rank computes the routing of every token)"
GATE_REASON = "moe gate: replicated (fewer outputs than ranks; a per-token scale)"
EXPERTS_WHOLE = "experts:"  # prefix of the reason a MoE layer stays whole (reported apart)
# Reasons detect_sharding does not report as "linears left whole": by choice, or reported here.
MOE_REASONS = ("router:", "moe gate:", EXPERTS_WHOLE)
_ROUTER_SEARCH_DEPTH = 12


@dataclass
class ExpertSplit:
    """One MoE layer split over a ``{ep: ep_size, tp: tp_size}`` grid of ranks."""

    node: str  # the torch_moe node's name
    module: str  # the experts module (owner of both stacked parameters)
    gate_up: str  # parameter target, full shape [E, 2I, H] (ungated experts: [E, I, H])
    down: str  # parameter target, full shape [E, H, I]
    num_experts: int
    intermediate: int
    ep_size: int
    tp_size: int
    source: str = "heuristic"

    @property
    def strategy(self) -> str:
        return "ep" if self.tp_size == 1 else "ep x tp"

    def experts(self, rank: int) -> tuple[int, int]:
        """[start, stop) of the experts ``rank``'s EP group holds."""
        per_group = self.num_experts // self.ep_size
        group = rank // self.tp_size
        return group * per_group, (group + 1) * per_group

    def inter_indices(self, rank: int) -> list[int]:
        """The intermediate features (of ``I``) ``rank`` keeps inside its group."""
        per_rank = self.intermediate // self.tp_size
        start = (rank % self.tp_size) * per_rank
        return list(range(start, start + per_rank))

    def describe(self, rank: int) -> str:
        start, stop = self.experts(rank)
        text = f"{self.strategy}: experts {start}-{stop - 1} of {self.num_experts}"
        if self.tp_size > 1:
            text += f", I/{self.tp_size} (grid ep={self.ep_size} x tp={self.tp_size})"
        return text


def moe_grid(world_size: int, process_grid: dict[str, int] | None) -> tuple[int, int]:
    """(ep, tp) for MoE layers; a grid whose product is not the world size (reported by
    ``detect_sharding``) falls back to 1-D EP over all ranks."""
    if process_grid:
        ep, tp = process_grid.get("ep", 1), process_grid.get("tp", 1)
        if ep * tp == world_size:
            return ep, tp
    return world_size, 1


def _param_target(gm: GraphModule, node: object) -> str | None:
    if not isinstance(node, Node) or node.op != "get_attr":
        return None
    try:
        gm.get_parameter(str(node.target))
    except AttributeError:
        return None
    return str(node.target)


def _routers(gm: GraphModule, node: object) -> list[str]:
    """Module paths of the linears the routing inputs come from (the router)."""
    found, frontier, seen = [], [(node, 0)], set()
    while frontier:
        current, depth = frontier.pop()
        if not isinstance(current, Node) or current in seen or depth > _ROUTER_SEARCH_DEPTH:
            continue
        seen.add(current)
        info = linear_info(gm, current)
        if info is not None:
            found.append(info.module)
            continue
        frontier += [(arg, depth + 1) for arg in current.all_input_nodes]
    return found


def _replicate_small_linears(
    gm: GraphModule, plan: ShardingPlan, claimed: set[str], node: Node, block: str
) -> None:
    """The router, and linears of the MoE block too small to split (Qwen2-MoE's
    ``shared_expert_gate``: one output), stay whole on purpose: listed, not reported."""
    split_modules = {s.module for s in plan.splits if s.node in claimed}
    routers = set(_routers(gm, node.args[1]) + _routers(gm, node.args[2])) - split_modules
    for router in routers:
        plan.unsharded[router] = ROUTER_REASON
    for info in all_linears(gm):
        small = info.out_features < plan.world_size
        whole = info.module not in split_modules | routers
        if small and whole and info.module.startswith(f"{block}."):
            plan.unsharded[info.module] = GATE_REASON


def detect_moe(
    gm: GraphModule, plan: ShardingPlan, claimed: set[str], grid: tuple[int, int]
) -> list[str]:
    """Add an ``ExpertSplit`` per MoE layer to ``plan.experts``; return the layers left whole
    (the reasons, for the build summary)."""
    ep_size, tp_size = grid
    problems = []
    for node in [n for n in gm.graph.nodes if op_name(n) in MOE_OPS]:
        gate_up, down = (_param_target(gm, arg) for arg in node.args[3:5])
        if gate_up is None or down is None:
            problems.append(
                f"MoE node {node.name}: its expert weights are not parameters, so every rank "
                "holds all experts (a model whose experts are computed weights is not split)."
            )
            plan.unsharded[node.name] = f"{EXPERTS_WHOLE} weights are not parameters"
            continue
        module = gate_up.rpartition(".")[0]
        num_experts, _, intermediate = gm.get_parameter(down).shape
        _replicate_small_linears(gm, plan, claimed, node, module.rpartition(".")[0])
        reason = None
        if num_experts % ep_size:
            reason = f"{num_experts} experts are not divisible by ep={ep_size}"
        elif intermediate % tp_size:
            reason = f"moe intermediate size {intermediate} is not divisible by tp={tp_size}"
        if reason is not None:
            plan.unsharded[module] = f"{EXPERTS_WHOLE} {reason} (world_size={plan.world_size})"
            problems.append(
                f"{module}: {reason} (world_size={plan.world_size}); every rank holds all "
                "experts. Choose a world size / process_grid that divides them."
            )
            continue
        split = ExpertSplit(node.name, module, gate_up, down, num_experts, intermediate,
                            ep_size, tp_size)  # fmt: skip
        plan.experts.append(split)
    return problems


def _insert_all_reduce(gm: GraphModule, node: Node) -> Node:
    with gm.graph.inserting_after(node):
        reduced = gm.graph.call_function(ad.torch_dist_all_reduce.default, (node,))
    node.replace_all_uses_with(reduced, delete_user_cb=lambda user: user is not reduced)
    return reduced


def apply_expert_split(gm: GraphModule, split: ExpertSplit, rank: int) -> None:
    """Local expert weights, local expert ids, one all-reduce (see the module docstring)."""
    node = next(n for n in gm.graph.nodes if n.name == split.node)
    start, stop = split.experts(rank)
    experts = list(range(start, stop))
    shard_parameter(gm, split.gate_up, 0, experts)
    shard_parameter(gm, split.down, 0, experts)
    owner = gm.get_submodule(split.module)
    owner.expert_range = (start, stop)
    if split.tp_size > 1:
        inter = split.inter_indices(rank)
        num_rows = gm.get_parameter(split.gate_up).shape[1]  # 2I gated, I ungated (up only)
        gate_up_rows = list(inter)
        if num_rows == 2 * split.intermediate:
            gate_up_rows += [split.intermediate + i for i in inter]  # gate half | up half
        # The lazy reader reads the expert slice; a second hook cuts the intermediate slice.
        shard_parameter(gm, split.gate_up, 1, gate_up_rows, lazy_read=False)
        shard_parameter(gm, split.down, 2, inter, lazy_read=False)
        leaf = lambda target: target.rpartition(".")[2]  # noqa: E731
        owner.expert_slices = {
            leaf(split.gate_up): (1, gate_up_rows, num_rows),
            leaf(split.down): (2, inter, split.intermediate),
        }
    with gm.graph.inserting_before(node):
        local_ids = gm.graph.call_function(aten.sub.Tensor, (node.args[1], start))
    node.args = (node.args[0], local_ids, *node.args[2:])
    _insert_all_reduce(gm, node)
