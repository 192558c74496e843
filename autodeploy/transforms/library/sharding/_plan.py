"""The sharding plan: what ``detect_sharding`` decides and ``sharding_transform_executor`` does.

A split weight dimension is described as a list of ``Segment``s: contiguous blocks of ``units``
(attention heads, or single features) of which each rank keeps some. One segment covers a plain
projection; a fused projection has several (Phi-3's qkv: q, k and v; gate_up: gate and up), and
each rank keeps its units of every segment, concatenated. KV heads replicated across ranks
(fewer KV heads than ranks) are a segment whose kept unit repeats on several ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._bmm import BmmSplit
    from ._moe import ExpertSplit
    from ._ssm import SsmLayer

Strategy = Literal["colwise", "rowwise", "gather", "mamba"]  # mamba: see _ssm.py
Source = Literal["manual", "factory", "heuristic"]
SHARED_KEY = "sharding_plan"


@dataclass
class Segment:
    """``num_units`` units of ``unit_size`` features; ``kept[rank]`` = the units rank keeps."""

    num_units: int
    unit_size: int
    kept: list[list[int]]

    @property
    def size(self) -> int:
        return self.num_units * self.unit_size

    def local_size(self, rank: int) -> int:
        return len(self.kept[rank]) * self.unit_size

    def feature_indices(self, rank: int, offset: int) -> list[int]:
        return [
            offset + unit * self.unit_size + i
            for unit in self.kept[rank]
            for i in range(self.unit_size)
        ]

    def is_contiguous_even(self) -> bool:
        """Every rank keeps its own equal, contiguous, non-overlapping block (in rank order)."""
        per_rank = self.num_units // len(self.kept)
        return (
            all(
                units == list(range(rank * per_rank, (rank + 1) * per_rank))
                for rank, units in enumerate(self.kept)
            )
            and per_rank * len(self.kept) == self.num_units
        )


def even_segment(num_units: int, unit_size: int, world_size: int) -> Segment:
    """Units dealt out in equal contiguous blocks; the caller checks divisibility."""
    per_rank = num_units // world_size
    kept = [list(range(r * per_rank, (r + 1) * per_rank)) for r in range(world_size)]
    return Segment(num_units, unit_size, kept)


def kv_segment(num_kv_heads: int, head_dim: int, world_size: int) -> tuple[Segment, bool]:
    """KV heads for ``world_size`` ranks: split evenly, or (fewer heads than ranks) each rank
    keeps the one head its query heads read. Returns (segment, replicated)."""
    if num_kv_heads % world_size == 0:
        return even_segment(num_kv_heads, head_dim, world_size), False
    kept = [[rank * num_kv_heads // world_size] for rank in range(world_size)]
    return Segment(num_kv_heads, head_dim, kept), True


def segment_indices(segments: list[Segment], rank: int) -> list[int]:
    """The features ``rank`` keeps of consecutive ``segments``, in order."""
    found: list[int] = []
    offset = 0
    for segment in segments:
        found += segment.feature_indices(rank, offset)
        offset += segment.size
    return found


@dataclass
class WeightSplit:
    """One linear split across ranks (``dim`` 0: output features, 1: input features)."""

    node: str  # the linear's node name
    module: str  # module path of the linear, e.g. model.layers.0.self_attn.q_proj
    weight: str  # parameter target
    bias: str | None
    strategy: Strategy
    source: Source
    segments: list[Segment]
    note: str = ""

    @property
    def dim(self) -> int:
        return 1 if self.strategy == "rowwise" else 0

    def indices(self, rank: int) -> list[int]:
        return segment_indices(self.segments, rank)

    def boundaries(self, rank: int) -> dict[int, int]:
        """Global cumulative segment boundaries -> local ones (slice/split literals)."""
        mapping: dict[int, int] = {}
        total = local = 0
        for segment in self.segments:
            total += segment.size
            local += segment.local_size(rank)
            mapping[total] = local
        return mapping


@dataclass
class ShardingPlan:
    """Everything detected for one build: the splits and what was left alone (and why)."""

    world_size: int
    rank: int
    splits: list[WeightSplit] = field(default_factory=list)
    experts: list[ExpertSplit] = field(default_factory=list)  # MoE layers (``_moe.py``)
    unsharded: dict[str, str] = field(default_factory=dict)  # module -> reason
    notes: list[str] = field(default_factory=list)
    ssm_layers: list[SsmLayer] = field(default_factory=list)  # a mixer's other parameters
    bmm_splits: list[BmmSplit] = field(default_factory=list)  # batched matmuls over heads

    def claimed(self) -> set[str]:
        return {split.node for split in self.splits}
