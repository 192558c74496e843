"""Manual and factory sources: a ``tp_plan`` of module-path patterns -> strategies.

Patterns use ``*`` for one path component (``layers.*.self_attn.q_proj``) and match the end of
a linear's module path, so Hugging Face's ``base_model_tp_plan`` (relative to the base model)
matches ``model.layers.0.self_attn.q_proj``. ``colwise`` and ``gather`` split output features,
``rowwise`` input features (+ all-reduce); with ``head_dim`` set, splits keep whole heads.
"""

from __future__ import annotations

import re

from torch.fx import GraphModule

from ....utils.errors import ConfigError
from ....utils.suggest import did_you_mean
from ._graph import LinearInfo, all_linears
from ._plan import ShardingPlan, WeightSplit, even_segment

STRATEGIES = ("colwise", "rowwise", "gather", "mamba")
# Hugging Face plan values we apply, and the ones left to the other sources.
_HF_EQUIVALENT = {"colwise": "colwise", "rowwise": "rowwise"}


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = [r"[^.]+" if part == "*" else re.escape(part) for part in pattern.split(".")]
    return re.compile(r"(?:^|.*\.)" + r"\.".join(parts) + "$")


def check_manual_plan(tp_plan: dict[str, str], linears: list[LinearInfo]) -> None:
    """Unknown strategies and patterns that match no linear are errors (with suggestions)."""
    modules = [info.module for info in linears]
    for pattern, strategy in tp_plan.items():
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"detect_sharding.manual_config.tp_plan[{pattern!r}]: unknown strategy "
                f"{strategy!r}.{did_you_mean(strategy, STRATEGIES)} Use one of "
                f"{', '.join(STRATEGIES)}."
            )
        if strategy == "mamba":
            continue  # matched against Mamba mixers, not linears (_ssm.ssm_from_tp_plan)
        regex = _pattern_regex(pattern)
        if not any(regex.match(module) for module in modules):
            generic = sorted({re.sub(r"\.\d+\.", ".*.", m) for m in modules})
            raise ConfigError(
                f"detect_sharding.manual_config.tp_plan: pattern {pattern!r} matches no linear "
                f"layer.{did_you_mean(pattern, generic)} Linear layers look like: "
                f"{', '.join(generic[:6])}."
            )


def plan_from_tp_plan(
    gm: GraphModule,
    plan: ShardingPlan,
    tp_plan: dict[str, str],
    source: str,
    head_dim: int | None,
    claimed: set[str],
) -> list[str]:
    """Add the splits ``tp_plan`` asks for; return the modules of linears it does not cover."""
    tp_plan = {p: s for p, s in tp_plan.items() if s != "mamba"}  # see _ssm.py
    compiled = [(_pattern_regex(p), s) for p, s in tp_plan.items()]
    uncovered: list[str] = []
    world = plan.world_size
    not_applied: dict[str, str] = {}
    for info in all_linears(gm):
        if info.node.name in claimed and source == "manual":
            continue  # a mixer split by a 'mamba' entry
        pattern, strategy = next(
            ((p, s) for (regex, s), p in zip(compiled, tp_plan) if regex.match(info.module)),
            (None, None),
        )
        if source == "factory" and strategy is not None:
            if strategy not in _HF_EQUIVALENT:
                not_applied[str(pattern)] = strategy
                strategy = None
            else:
                strategy = _HF_EQUIVALENT[strategy]
        if strategy is None:
            uncovered.append(info.module)
            continue
        if info.node.name in claimed:
            continue
        features = info.in_features if strategy == "rowwise" else info.out_features
        unit = head_dim if head_dim and features % head_dim == 0 else 1
        if (features // unit) % world:
            what = f"{features // unit} heads of {unit}" if unit > 1 else f"{features} features"
            raise ConfigError(
                f"detect_sharding ({source} plan): {info.module} is {strategy} but its "
                f"{what} do not divide over world_size={world}. Use a world size that divides "
                "it, or leave this layer out of the plan."
            )
        plan.splits.append(
            WeightSplit(
                node=info.node.name,
                module=info.module,
                weight=info.weight,
                bias=info.bias,
                strategy=strategy,  # type: ignore[arg-type]
                source=source,  # type: ignore[arg-type]
                segments=[even_segment(features // unit, unit, world)],
            )
        )
        claimed.add(info.node.name)
    for pattern, strategy in not_applied.items():
        plan.notes.append(f"factory plan {pattern!r}: {strategy!r} is not applied here")
    return uncovered
