"""export_to_gm: dynamic dims, canonical attention op from HF, patch selection."""

import pytest
import torch

from autodeploy.export import ExportPatchRegistry
from autodeploy.models import ModelFactoryRegistry
from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import count_ops
from autodeploy.utils.errors import RegistryError

PIPELINE = {"build_model": {"stage": "factory"}, "export_to_gm": {"stage": "export"}}


def build(**export_cfg):
    factory = ModelFactoryRegistry.get("AutoModelForCausalLM")("builtin:tiny-llama")
    cfg = {**PIPELINE, "export_to_gm": {"stage": "export", **export_cfg}}
    return InferenceOptimizer(factory, cfg, instruments=[])(None)


def test_hf_attention_becomes_one_canonical_op_per_layer():
    gm = build()
    assert count_ops(gm, torch.ops.auto_deploy.torch_attention) == 2
    dims = [d for n in gm.graph.nodes if n.op == "placeholder" for d in n.meta["val"].shape]
    assert all(isinstance(d, torch.SymInt) for d in dims)  # batch and sequence stay dynamic


def test_patches_can_be_limited_and_unknown_patch_is_named():
    assert {"autocast_noop", "hf_packed_sequences"} <= set(ExportPatchRegistry.names())
    gm = build(patches=["autocast_noop"])
    assert count_ops(gm, torch.ops.auto_deploy.torch_attention) == 2
    with pytest.raises(RegistryError, match="Did you mean 'autocast_noop'"):
        build(patches=["autocast_nop"])
