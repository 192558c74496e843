"""Helpers for the post_load_fusion transform tests.

``loaded_graph(arch)`` runs the default pipeline (autodeploy/config/default.yaml) up to and
including weight_load on a tiny checkpoint of ``arch`` and returns a fresh copy of the result,
the graph a post_load_fusion transform sees. The expensive part (export, pattern matching) is
done once per process and architecture; every call deep-copies it.
"""

from __future__ import annotations

import copy
import functools
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from tiny_models import save_tiny

from autodeploy.config.layers import DEFAULT_YAML_PATH
from autodeploy.models import ModelFactoryRegistry
from autodeploy.shim import CachedSequenceInterface
from autodeploy.transforms import InferenceOptimizer, Stages, TransformRegistry
from autodeploy.transforms.graph_utils import count_ops

ad = torch.ops.auto_deploy
aten = torch.ops.aten
MAX_SEQ_LEN = 64


def default_transforms(last_stage: Stages = Stages.WEIGHT_LOAD) -> dict[str, dict[str, Any]]:
    """default.yaml's transforms of every stage up to ``last_stage``."""
    transforms = yaml.safe_load(DEFAULT_YAML_PATH.read_text())["transforms"]
    return {
        name: dict(cfg)
        for name, cfg in transforms.items()
        if TransformRegistry.has(name) and Stages(cfg["stage"]).order <= last_stage.order
    }


def make_cm(device: str = "cpu") -> CachedSequenceInterface:
    return CachedSequenceInterface(
        max_seq_len=MAX_SEQ_LEN,
        max_batch_size=4,
        max_num_tokens=128,
        device=device,
        kv_cache_config={"tokens_per_block": 4},
    )


@functools.cache
def _loaded(arch: str, device: str, dtype: str) -> tuple[torch.fx.GraphModule, torch.nn.Module]:
    with tempfile.TemporaryDirectory(prefix=f"fusion_{arch}_") as path:
        hf_model = save_tiny(Path(path), arch, seed=1)
        factory = ModelFactoryRegistry.get("AutoModelForCausalLM")(path, dtype=dtype)
        gm = InferenceOptimizer(factory, default_transforms(), strict=True)(make_cm(device))
    return gm, hf_model


def loaded_graph(
    arch: str, device: str = "cpu", dtype: str = "auto"
) -> tuple[torch.fx.GraphModule, torch.nn.Module]:
    """(a fresh copy of the loaded graph of ``arch``, the fp32 HF eager model (CPU))."""
    gm, hf_model = _loaded(arch, device, dtype)
    return copy.deepcopy(gm), hf_model


def apply(gm, name: str, cm=None, strict: bool = False, **config):
    """Run one post_load_fusion transform on ``gm``; returns (graph, its TransformInfo)."""
    optimizer = InferenceOptimizer(
        None, {name: {"stage": "post_load_fusion", **config}}, strict=strict
    )
    gm = optimizer(cm if cm is not None else make_cm(), gm)
    return gm, gm.meta["_autodeploy"]["transform_history"][name]


def sample_inputs(batch: int = 2, seq: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(3, 250, (batch, seq), generator=gen),
        "position_ids": torch.arange(seq).repeat(batch, 1),
    }


def logits(gm, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return gm(**inputs)


def hf_logits(hf_model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(inputs["input_ids"]).logits


def op_counts(gm, **ops) -> dict[str, int]:
    """{name: number of nodes calling op} for keyword arguments name=op."""
    return {name: count_ops(gm, op) for name, op in ops.items()}
