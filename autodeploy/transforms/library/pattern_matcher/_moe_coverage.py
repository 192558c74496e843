"""MoE part of the pattern-coverage report: one MoE op per sparse layer, dense MLPs elsewhere.

Which layers are sparse comes from the Hugging Face config's MoE knobs (``mlp_only_layers``,
``decoder_sparse_step``, ``first_k_dense_replace`` / ``moe_layer_freq``,
``moe_layer_start_index``), or for hybrids from the per-layer kinds (``layers_block_type``
entries ``"moe"``); a config without an expert count is a dense model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import Node

from ...graph_utils import is_op

ad = torch.ops.auto_deploy
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
_EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def moe_ops() -> tuple[Any, ...]:
    """The canonical MoE op and its backends (whichever are registered)."""
    names = ("torch_moe", "torch_moe_grouped", "triton_moe_fused")
    return tuple(getattr(ad, n).default for n in names if hasattr(ad, n))


def expected_moe_layers(config: Any) -> list[int]:
    """Sparse (MoE) layer indices the config declares; [] for a dense model."""
    if config is None or not any(getattr(config, k, None) for k in _EXPERT_COUNT_KEYS):
        return []
    block_types = getattr(config, "layers_block_type", None)
    if isinstance(block_types, (list, tuple)):  # hybrids (Nemotron-H) name each layer's kind
        return [i for i, kind in enumerate(block_types) if kind == "moe"]
    num_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    dense_only = set(getattr(config, "mlp_only_layers", None) or [])
    step = int(getattr(config, "decoder_sparse_step", 1) or 1)
    first_sparse = int(getattr(config, "first_k_dense_replace", 0) or 0)
    first_sparse = max(first_sparse, int(getattr(config, "moe_layer_start_index", 0) or 0))
    freq = int(getattr(config, "moe_layer_freq", 1) or 1)
    return [
        i
        for i in range(num_layers)
        if i not in dense_only and (i + 1) % step == 0 and i >= first_sparse and i % freq == 0
    ]


@dataclass
class MoECoverage:
    expected_layers: list[int] = field(default_factory=list)
    found_layers: list[int] = field(default_factory=list)
    missing_layers: list[int] = field(default_factory=list)
    dense_layers_without_mlp: list[int] = field(default_factory=list)
    num_ops: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing_layers


def _layer_of(node: Node) -> int | None:
    stack = node.meta.get("nn_module_stack") or {}
    for path, _ in reversed(list(stack.values())):
        found = _LAYER_INDEX.search(path)
        if found:
            return int(found.group(1))
    return None


def collect_moe_coverage(
    nodes: list[Node], config: Any, mlp_layers: set[int], num_layers: int
) -> MoECoverage:
    """``mlp_layers``: layers with a dense ``*MLP`` module in the graph."""
    expected = expected_moe_layers(config)
    if not expected:
        return MoECoverage()
    found = [_layer_of(n) for n in nodes if is_op(n, moe_ops())]
    found_layers = sorted({layer for layer in found if layer is not None})
    if found and not found_layers:  # no module information: count only
        missing = expected[len(found) :]
    else:
        missing = [layer for layer in expected if layer not in found_layers]
    dense = [i for i in range(num_layers) if i not in expected]
    return MoECoverage(
        expected_layers=expected,
        found_layers=found_layers,
        missing_layers=missing,
        dense_layers_without_mlp=[i for i in dense if i not in mlp_layers],
        num_ops=len(found),
    )


def format_moe_coverage(cov: MoECoverage) -> list[str]:
    if not cov.expected_layers:
        return []
    total = len(cov.expected_layers)
    lines = [
        f"  moe: {total - len(cov.missing_layers)}/{total} sparse layers -> torch_moe "
        f"({cov.num_ops} ops)"
    ]
    if cov.missing_layers:
        lines.append(f"    MISSING MoE op in layers {cov.missing_layers}")
    if cov.dense_layers_without_mlp:
        lines.append(f"    dense layers without an MLP module: {cov.dense_layers_without_mlp}")
    return lines
