"""Static-batching shapes (vLLM-Spyre ``warmup_shapes``) as warm-up and CUDA-graph sizes.

An entry may list, per world size, the (prompt length, batch size) shapes a pooling or
fixed-shape deployment runs with::

    static_batching:
      - world_size: 1
        warmup_shapes: [{prompt_len: 64, batch_size: 4}, {prompt_len: 512, batch_size: 1}]

When the world size in effect has such a list, one configuration layer (just above the entry's
files, below everything the user sets) maps it onto ours:

- ``cuda_graph_batch_sizes``: every ``batch_size`` (sorted, once each): the compile backend warms
  up and captures one graph per size;
- ``max_batch_size``: the largest ``batch_size``;
- ``max_seq_len``: the longest ``prompt_len`` (static shapes are prefill-only);
- ``max_num_tokens``: the largest ``prompt_len * batch_size`` (one step holds a whole shape).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..layers import Layer


class WarmupShape(BaseModel):
    """One static shape: ``batch_size`` prompts of ``prompt_len`` tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_len: int = Field(ge=1, description="Prompt length in tokens.")
    batch_size: int = Field(ge=1, description="Prompts per step.")


class StaticBatching(BaseModel):
    """The static shapes of one world size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    world_size: int = Field(ge=1, description="Number of ranks.")
    warmup_shapes: list[WarmupShape] = Field(
        min_length=1, description="The shapes to warm up and capture."
    )

    @model_validator(mode="after")
    def _check_unique(self) -> StaticBatching:
        shapes = [(s.prompt_len, s.batch_size) for s in self.warmup_shapes]
        repeated = sorted({s for s in shapes if shapes.count(s) > 1})
        if repeated:
            raise ValueError(f"warmup shape(s) listed twice: {repeated}")
        return self

    def settings(self) -> dict[str, Any]:
        """The autodeploy settings these shapes stand for (see the module docstring)."""
        sizes = sorted({shape.batch_size for shape in self.warmup_shapes})
        return {
            "cuda_graph_batch_sizes": sizes,
            "max_batch_size": sizes[-1],
            "max_seq_len": max(shape.prompt_len for shape in self.warmup_shapes),
            "max_num_tokens": max(s.prompt_len * s.batch_size for s in self.warmup_shapes),
        }


def static_batching_source(world_size: int) -> str:
    return f"registry:models.yaml:static_batching[world_size={world_size}]"


def static_batching_layer(configs: list[StaticBatching], world_size: int) -> Layer | None:
    """The layer for ``world_size`` (None when the entry lists no shapes for it)."""
    for config in configs:
        if config.world_size == world_size:
            return Layer(static_batching_source(world_size), config.settings())
    return None


def check_unique_world_sizes(configs: list[StaticBatching]) -> None:
    sizes = [config.world_size for config in configs]
    repeated = sorted({size for size in sizes if sizes.count(size) > 1})
    if repeated:
        raise ValueError(f"static_batching lists world_size {repeated} more than once")
