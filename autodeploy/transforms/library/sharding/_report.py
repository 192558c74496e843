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
    rows += ssm_rows(gm, plan) + bmm_rows(gm, plan)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"sharding plan: rank {plan.rank} of {plan.world_size}, {len(plan.splits)} split layers"
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
