"""The sharding plan as a table (``explain_sharding`` and ``dump_graph``'s summary.txt)."""

from __future__ import annotations

from torch.fx import GraphModule

from ._bmm import bmm_rows
from ._plan import ShardingPlan
from ._ssm import ssm_rows

_COLLECTIVE = {
    "colwise": "-",
    "rowwise": "all_reduce",
    "gather": "all_gather(dim=-1)",
    "mamba": "-",  # the mixer's out_proj reduces
}


def _bytes(gm: GraphModule, target: str | None) -> tuple[tuple[int, ...], int]:
    if target is None:
        return (), 0
    param = gm.get_parameter(target)
    return tuple(param.shape), param.numel() * param.element_size()


def expert_rows(gm: GraphModule, plan: ShardingPlan) -> list[tuple[str, ...]]:
    """One row per MoE layer: its experts on this rank, both local stacked weights."""
    rows = []
    for split in plan.experts:
        (up_shape, up_size), (down_shape, down_size) = (
            _bytes(gm, target) for target in (split.gate_up, split.down)
        )
        shapes = ", ".join("x".join(map(str, shape)) for shape in (up_shape, down_shape))
        size = f"{up_size + down_size:,}"
        rows.append((split.module, split.describe(plan.rank), split.source, shapes,
                     "all_reduce", size))  # fmt: skip
    return rows


def format_plan(gm: GraphModule, plan: ShardingPlan) -> str:
    """Per split layer: strategy, source, local weight shape, collective, bytes on this rank;
    then the layers left whole (and why), notes, and this rank's total parameter bytes."""
    rows = [("layer", "strategy", "source", "local weight", "collective", "bytes/rank")]
    for split in plan.splits:
        shape, size = _bytes(gm, split.weight)
        _, bias_size = _bytes(gm, split.bias)
        strategy = split.strategy + (f" ({split.note})" if split.note else "")
        rows.append(
            (
                split.module,
                strategy,
                split.source,
                "x".join(map(str, shape)),
                _COLLECTIVE[split.strategy],
                f"{size + bias_size:,}",
            )
        )
    rows += ssm_rows(gm, plan) + bmm_rows(gm, plan) + expert_rows(gm, plan)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    moe = f", {len(plan.experts)} MoE layers" if plan.experts else ""
    lines = [
        f"sharding plan: rank {plan.rank} of {plan.world_size}, {len(plan.splits)} split "
        f"layers{moe}"
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if plan.unsharded:
        lines.append("not split (replicated on every rank):")
        lines += [f"  {module}: {reason}" for module, reason in sorted(plan.unsharded.items())]
    lines += [f"note: {note}" for note in plan.notes]
    seen: set[int] = set()
    total = 0
    for param in gm.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel() * param.element_size()
    lines.append(f"parameter bytes on rank {plan.rank}: {total:,}")
    return "\n".join(lines)
