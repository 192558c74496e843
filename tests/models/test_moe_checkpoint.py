"""Per-expert checkpoint tensors are stacked into the model's expert parameters on load (through
a load_state_dict pre-hook), also for a module holding only a slice of the experts (EP)."""

import torch
import transformers
from safetensors.torch import load_file
from tiny_models import save_tiny, tiny_config

from autodeploy.models.hf_key_mapping import hf_key_conversions
from autodeploy.models.moe_checkpoint import stack_experts_on_load


def test_expert_range_loads_only_the_local_experts(tmp_path):
    reference = save_tiny(tmp_path, "qwen3_moe")
    shard = load_file(str(tmp_path / "model.safetensors"))
    model = transformers.AutoModelForCausalLM.from_config(tiny_config("qwen3_moe"))
    rename, converters = hf_key_conversions(model)
    experts = model.model.layers[0].mlp.experts
    # This "rank" holds experts 2 and 3 of 4.
    experts.gate_up_proj = torch.nn.Parameter(torch.zeros(2, *experts.gate_up_proj.shape[1:]))
    experts.down_proj = torch.nn.Parameter(torch.zeros(2, *experts.down_proj.shape[1:]))
    experts.expert_range = (2, 4)
    with stack_experts_on_load(model, converters, rename):
        result = model.load_state_dict({rename(k): v for k, v in shard.items()}, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == []
    full = reference.model.layers[0].mlp.experts
    torch.testing.assert_close(experts.gate_up_proj, full.gate_up_proj[2:4], rtol=0, atol=0)
    torch.testing.assert_close(experts.down_proj, full.down_proj[2:4], rtol=0, atol=0)
    layer1 = model.model.layers[1].mlp.experts
    torch.testing.assert_close(
        layer1.gate_up_proj, reference.model.layers[1].mlp.experts.gate_up_proj, rtol=0, atol=0
    )
