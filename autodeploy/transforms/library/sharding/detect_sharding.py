"""detect_sharding: decide how this rank's part of the model is split (writes the plan).

Before: the canonical graph (unsplit). After: the same graph; ``shared_config.sharding_plan``
holds one ``WeightSplit`` per split linear (strategy, source, segments) and the layers left
unsplit with the reason. ``sharding_transform_executor`` applies it. Sources run in
``sharding_source`` order and the first to claim a linear wins (see the README "Several GPUs").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.fx import GraphModule

from ....utils.errors import ConfigError
from ....utils.suggest import did_you_mean
from ...base import BaseTransform
from ...facts import CANONICAL_ATTENTION, EXPORTED_GRAPH, SHARDING_PLAN
from ...interface import SharedConfig, Stages, TransformConfig, TransformInfo
from ...registry import TransformRegistry
from ._bmm import detect_bmm
from ._graph import all_linears
from ._heuristic import (
    REPLICATED_BY_CHOICE,
    detect_attention,
    detect_lm_head,
    detect_mlp,
    detect_simple,
    report_leftovers,
)
from ._moe import MOE_REASONS, detect_moe, moe_grid
from ._plan import SHARED_KEY, ShardingPlan
from ._ssm import detect_ssm, report_unsplit_mixers, ssm_from_tp_plan
from ._tp_plan import check_manual_plan, plan_from_tp_plan

SOURCES = ("manual", "factory", "heuristic")
DIMS = ("tp", "ep", "bmm", "ssm")
GRID_AXES = ("ep", "tp")


class ManualConfig(BaseModel):
    """``manual_config``: a user plan."""

    model_config = ConfigDict(extra="forbid")
    head_dim: int | None = Field(
        default=None, description="Head size: colwise/rowwise splits of the plan keep whole heads."
    )
    tp_plan: dict[str, str] = Field(
        default_factory=dict,
        description="Module-path pattern (`*` = one component) -> colwise | rowwise | gather "
        "| mamba (a Mamba mixer module: heads, groups and conv channels split together).",
    )


class DetectShardingConfig(TransformConfig):
    simple_shard_only: bool = Field(
        default=False, description="Split every linear's outputs and all-gather them."
    )
    sharding_source: list[Literal["manual", "factory", "heuristic"]] = Field(
        default_factory=lambda: ["manual", "factory", "heuristic"],
        description="Plan sources in priority order; the first to claim a layer wins.",
    )
    support_partial_config: bool = Field(
        default=True,
        description="Layers a manual/factory plan leaves out fall to the next sources; false: "
        "an incomplete plan is rejected (a reported problem; an error in strict mode).",
    )
    sharding_dims: list[Literal["tp", "ep", "bmm", "ssm"]] = Field(
        default_factory=lambda: ["tp", "ep", "bmm"], description="Which heuristics run."
    )
    process_grid: dict[str, int] | None = Field(
        default=None, description="{ep: E, tp: T} mesh for MoE layers (E*T == world_size)."
    )
    dist_backend: Literal["auto", "torch"] = Field(
        default="auto",
        description="Collective ops: torch_dist_* over torch.distributed (NCCL on CUDA, gloo "
        "on CPU); `auto` is the same here (no vendor collectives are bundled).",
    )
    manual_config: ManualConfig = Field(
        default_factory=ManualConfig, description="A user plan: {head_dim, tp_plan}."
    )

    @field_validator("process_grid")
    @classmethod
    def _check_grid(cls, grid: dict[str, int] | None) -> dict[str, int] | None:
        for axis, size in (grid or {}).items():
            if axis not in GRID_AXES:
                raise ValueError(
                    f"unknown process_grid axis {axis!r}.{did_you_mean(axis, GRID_AXES)} "
                    f"Axes: {', '.join(GRID_AXES)}."
                )
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"process_grid.{axis} must be a positive integer, got {size!r}")
        return grid


@TransformRegistry.register("detect_sharding")
class DetectSharding(BaseTransform):
    """Build this rank's sharding plan from the manual, factory and heuristic sources."""

    stage = Stages.SHARDING
    requires = (EXPORTED_GRAPH,)
    uses = (CANONICAL_ATTENTION,)
    provides = (SHARDING_PLAN,)

    config: DetectShardingConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return DetectShardingConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        world = shared_config.world_size
        unchanged = TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)
        if world < 2 or not isinstance(gm, GraphModule):
            return gm, unchanged
        cfg = self.config
        self._check_grid(world, shared_config)
        # The global rank: torchrun across nodes gives local ranks that repeat per node.
        rank = int(getattr(shared_config, "rank", shared_config.local_rank))
        plan = ShardingPlan(world_size=world, rank=rank)
        claimed: set[str] = set()
        for source in cfg.sharding_source:
            if source == "heuristic":
                self._heuristic(gm, plan, claimed)
            else:
                self._plan_source(gm, plan, claimed, source, factory, shared_config)
        report_leftovers(gm, plan, claimed)
        heuristic = "heuristic" in cfg.sharding_source
        if "bmm" in cfg.sharding_dims and heuristic:
            detect_bmm(gm, plan)  # after report_leftovers, which keeps entries of linears only
        if "ep" in cfg.sharding_dims and heuristic:
            for problem in detect_moe(gm, plan, claimed, moe_grid(world, cfg.process_grid)):
                self.report_problem(shared_config, problem)
        for note in plan.notes:
            self.log_note(note)
        self._report_unsplit(plan, shared_config)
        setattr(shared_config, SHARED_KEY, plan)
        matches = len(plan.splits) + len(plan.bmm_splits) + len(plan.experts)
        return gm, TransformInfo(num_matches=matches, is_clean=True, has_valid_shapes=True)

    def _report_unsplit(self, plan: ShardingPlan, shared_config: SharedConfig) -> None:
        """Linears left whole (every rank computes them in full) are a reported fallback."""
        whole = {
            module: reason
            for module, reason in plan.unsharded.items()
            if not reason.startswith((*REPLICATED_BY_CHOICE, *MOE_REASONS))
        }
        if whole:
            shown = "; ".join(f"{m}: {r}" for m, r in sorted(whole.items())[:4])
            more = f" (+{len(whole) - 4} more)" if len(whole) > 4 else ""
            self.report_problem(
                shared_config,
                f"{len(whole)} linear layers stay whole on every rank: {shown}{more}. "
                "`python -m autodeploy.tools.explain_sharding` lists them all.",
            )

    def log_note(self, note: str) -> None:
        from ....utils.logger import logger

        logger.info("sharding: %s", note)

    def _check_grid(self, world: int, shared_config: SharedConfig) -> None:
        grid = self.config.process_grid
        if grid is None:
            return
        product = 1
        for size in grid.values():
            product *= size
        if product != world:
            self.report_problem(
                shared_config,
                f"process_grid {grid} has {product} ranks but world_size={world}; MoE layers "
                "use 1-D expert parallelism instead.",
            )

    def _heuristic(self, gm: GraphModule, plan: ShardingPlan, claimed: set[str]) -> None:
        if self.config.simple_shard_only:
            detect_simple(gm, plan, claimed)
            return
        if "ssm" in self.config.sharding_dims:
            detect_ssm(gm, plan, claimed)
        else:
            report_unsplit_mixers(gm, plan, claimed)
        if "tp" in self.config.sharding_dims:
            detect_attention(gm, plan, claimed)
            detect_mlp(gm, plan, claimed)
            detect_lm_head(gm, plan, claimed)

    def _plan_source(self, gm, plan, claimed, source, factory, shared_config) -> None:
        if source == "manual":
            tp_plan = self.config.manual_config.tp_plan
            if not tp_plan:
                return
            check_manual_plan(tp_plan, all_linears(gm))
            ssm_from_tp_plan(gm, plan, tp_plan, claimed)
            head_dim = self.config.manual_config.head_dim
        else:
            sharding = factory.get_sharding_config() if factory is not None else {}
            tp_plan = dict(sharding.get("tp_plan") or {})
            if not tp_plan:
                plan.notes.append("factory: the model has no base_model_tp_plan")
                return
            head_dim = _factory_head_dim(factory)
        before = len(plan.splits)
        try:
            uncovered = plan_from_tp_plan(gm, plan, tp_plan, source, head_dim, set(claimed))
        except ConfigError as exc:
            if source == "manual":
                raise
            # The model's own plan does not fit this world size: the heuristic takes over.
            del plan.splits[before:]
            plan.notes.append(f"factory plan not applied: {exc}")
            return
        new = plan.splits[before:]
        if uncovered and not self.config.support_partial_config:
            del plan.splits[before:]
            shown = ", ".join(uncovered[:4]) + (" ..." if len(uncovered) > 4 else "")
            self.report_problem(
                shared_config,
                f"the {source} tp_plan does not cover {len(uncovered)} linear layers ({shown}) "
                "and support_partial_config is false: the plan was not applied.",
            )
            return
        claimed.update(split.node for split in new)


def _factory_head_dim(factory) -> int | None:
    config = getattr(factory, "model_config", None)
    head_dim = getattr(config, "head_dim", None)
    if head_dim:
        return int(head_dim)
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    return hidden // heads if heads and hidden else None


__all__ = ["DetectSharding", "DetectShardingConfig", "SOURCES", "DIMS"]
