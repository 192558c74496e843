"""Shard a tiny model's canonical graph for one rank in this process (meta device, no ranks).

The canonical graph (after pattern matching) is built once per checkpoint and deep-copied for
each plan, so each test runs only the two sharding transforms.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import torch
from tiny_models import save_tiny

from autodeploy.config import LlmArgs
from autodeploy.models import create_factory
from autodeploy.tools.dump_graph import select_transforms
from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.interface import SharedConfig
from autodeploy.transforms.library.sharding.sharding_transform_executor import PLAN_META_KEY

ad = torch.ops.auto_deploy


def tiny_dir(tmp_path_factory, arch: str) -> Path:
    path = tmp_path_factory.mktemp(arch)
    save_tiny(path, arch)
    return path


@functools.cache
def canonical(model_dir: Path) -> tuple[Any, Any]:
    args = LlmArgs(model=str(model_dir), device="cpu")
    factory = create_factory(args)
    selected = select_transforms(args.to_dict()["transforms"], "verify_pattern_coverage", [])
    return InferenceOptimizer(factory, selected, instruments=[])(None), factory


def shard(model_dir: Path, world_size: int, rank: int = 0, detect: dict | None = None,
          strict: bool = False):  # fmt: skip
    """(graph, plan) of ``rank``; ``detect`` overrides detect_sharding's settings."""
    base, factory = canonical(model_dir)
    config = {
        "detect_sharding": {"stage": "sharding", **(detect or {})},
        "sharding_transform_executor": {"stage": "sharding"},
    }
    shared = SharedConfig(local_rank=rank, rank=rank, world_size=world_size, strict=strict)
    optimizer = InferenceOptimizer(factory, config, shared_config=shared, instruments=[])
    gm = optimizer(None, copy.deepcopy(base))
    return gm, gm.meta.get(PLAN_META_KEY)


def shard_graph(gm, world_size: int, rank: int, detect: dict):
    """(graph, plan) of ``rank`` for an exported graph without a factory (custom models)."""
    config = {
        "detect_sharding": {"stage": "sharding", "sharding_source": ["heuristic"], **detect},
        "sharding_transform_executor": {"stage": "sharding"},
    }
    shared = SharedConfig(local_rank=rank, rank=rank, world_size=world_size)
    gm = InferenceOptimizer(None, config, shared_config=shared, instruments=[])(None, gm)
    return gm, gm.meta.get(PLAN_META_KEY)


def count_collectives(gm) -> tuple[int, int]:
    nodes = list(gm.graph.nodes)
    reduces = sum(n.target == ad.torch_dist_all_reduce.default for n in nodes)
    gathers = sum(n.target == ad.torch_dist_all_gather.default for n in nodes)
    return reduces, gathers


def strategies(plan) -> dict[str, tuple[str, str]]:
    """module -> (strategy, source)."""
    return {s.module: (s.strategy, s.source) for s in plan.splits}


def param_bytes(gm) -> int:
    seen, total = set(), 0
    for param in gm.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel() * param.element_size()
    return total
