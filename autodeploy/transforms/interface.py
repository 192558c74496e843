"""Pass-manager data types: stages, transform configs, per-transform results, shared state."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Stages(str, enum.Enum):
    """Pipeline stages in the order they run. Transforms are sorted by stage (stable)."""

    FACTORY = "factory"
    EXPORT = "export"
    POST_EXPORT = "post_export"
    PATTERN_MATCHER = "pattern_matcher"
    SHARDING = "sharding"
    WEIGHT_LOAD = "weight_load"
    POST_LOAD_FUSION = "post_load_fusion"
    VISUALIZE = "visualize"
    CACHE_INIT = "cache_init"
    COMPILE = "compile"

    @property
    def order(self) -> int:
        return list(Stages).index(self)

    # All four comparisons are explicit: as a ``str`` subclass, functools.total_ordering would
    # keep str's own <=, >, >= (alphabetical order) instead of deriving them from __lt__.
    def __lt__(self, other: object) -> bool:
        return self.order < other.order if isinstance(other, Stages) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self.order <= other.order if isinstance(other, Stages) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self.order > other.order if isinstance(other, Stages) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self.order >= other.order if isinstance(other, Stages) else NotImplemented

    def __str__(self) -> str:
        return self.value


class TransformConfig(BaseModel):
    """Fields every transform accepts. Subclasses add their own; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False)

    stage: Stages = Field(description="Pipeline stage the transform runs in.")
    enabled: bool = Field(default=True, description="Run the transform at all.")
    skip_on_error: bool = Field(
        default=False,
        description="Catch an exception from the transform, report it in the build summary and "
        "go on with the graph unchanged (an error in strict mode).",
    )
    run_graph_cleanup: bool = Field(
        default=True,
        description="After the transform, canonicalize the graph (dead code, lint, recompile) if "
        "the transform did not leave it clean.",
    )
    run_shape_prop: bool = Field(
        default=False,
        description="After the transform, run fake-tensor shape propagation if shapes are stale.",
    )
    requires_clean_graph: bool = Field(
        default=True, description="Canonicalize the graph before the transform if it is not clean."
    )
    requires_shape_prop: bool = Field(
        default=False,
        description="Run fake-tensor shape propagation before the transform if shapes are stale.",
    )


class TransformInfo(BaseModel):
    """What one transform did. ``is_clean``/``has_valid_shapes`` describe the graph it left."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    skipped: bool = Field(default=False, description="The transform did not change anything.")
    num_matches: int = Field(default=0, description="How many sites the transform rewrote.")
    is_clean: bool = Field(default=False, description="The graph needs no cleanup.")
    has_valid_shapes: bool = Field(default=False, description="node.meta['val'] is up to date.")

    def __or__(self, other: TransformInfo) -> TransformInfo:
        """Combine two partial results of one transform: matches add up, flags must both hold."""
        return TransformInfo(
            skipped=self.skipped and other.skipped,
            num_matches=self.num_matches + other.num_matches,
            is_clean=self.is_clean and other.is_clean,
            has_valid_shapes=self.has_valid_shapes and other.has_valid_shapes,
        )


class BuildProblem(BaseModel):
    """Something the build did not do as asked: a failed or skipped transform, a fallback."""

    model_config = ConfigDict(frozen=True)

    transform: str
    stage: str
    message: str


class SharedConfig(BaseModel):
    """State shared by all transforms of one build: the distributed layout and the typed
    channel between transforms. Unknown fields are errors (``extra="forbid"``): a transform that
    needs to hand something to a later one adds a typed field here.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    world_size: int = Field(default=1, ge=1, description="Number of ranks the model is split over.")
    rank: int = Field(default=0, ge=0, description="This process's global rank, < world_size.")
    local_rank: int = Field(
        default=0, ge=0, description="This process's rank on its node (picks the GPU)."
    )
    sharding_plan: Any = Field(
        default=None,
        description="How to split the graph over the ranks: written by `detect_sharding`, read by "
        "`sharding_transform_executor` (the facts SHARDING_PLAN / WEIGHTS_SHARDED). None until "
        "detection ran; its type is the sharding module's plan class.",
    )
    strict: bool = Field(default=False, description="Turn reported problems into errors.")
    problems: list[BuildProblem] = Field(
        default_factory=list, description="What the end-of-build summary reports."
    )

    @model_validator(mode="after")
    def _rank_in_world(self) -> SharedConfig:
        if self.rank >= self.world_size:
            raise ValueError(
                f"rank={self.rank} is not below world_size={self.world_size}: ranks count from 0."
            )
        return self
