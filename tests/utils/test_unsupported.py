"""Unsupported model parts: the error names the module class and gives only advice that helps."""

from __future__ import annotations

import pytest
import torch
import transformers

from autodeploy.export import torch_export_to_gm
from autodeploy.models.hf import AutoModelForCausalLMFactory
from autodeploy.utils.errors import UnsupportedModelError
from autodeploy.utils.exit_codes import EXIT_BAD_INPUT, exit_code_for
from autodeploy.utils.unsupported import graph_failure_note

BAD_ADVICE = ("Re-save", "re-save", "attn_implementation")


class TokenRouter(torch.nn.Module):
    """A custom block whose routing branches on tensor values (not capturable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


class CustomModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.router = TokenRouter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.router(self.proj(x))


def test_export_failure_names_the_custom_module_without_attention_advice():
    with pytest.raises(UnsupportedModelError) as info:
        torch_export_to_gm(
            CustomModel(), {"x": torch.randn(2, 4)}, {"x": {0: torch.export.Dim.DYNAMIC}}
        )
    message = str(info.value)
    assert "in module TokenRouter at 'router'" in message
    assert "Not supported: control flow or shapes that depend on tensor values" in message
    assert not any(bad in message for bad in BAD_ADVICE), message
    assert exit_code_for(info.value) == EXIT_BAD_INPUT


def test_graph_failure_names_the_module_a_node_was_traced_in():
    model = CustomModel().eval()
    model.router = torch.nn.Identity()  # exportable; the node under test is the projection
    gm = torch.export.export(model, (torch.randn(2, 4),)).module()
    node = next(n for n in gm.graph.nodes if n.op == "call_function")  # the projection
    error = RuntimeError("boom: not implemented for 'Int'")
    error.add_note(f"While executing %{node.name} : ...")
    note = graph_failure_note(error, gm)
    assert "traced in module Linear at 'proj'" in note
    assert "without an implementation for this dtype or device" in note


@pytest.mark.skipif(
    not hasattr(transformers, "DeepseekV3Config"), reason="transformers without DeepSeek-V3"
)
def test_deepseek_v3_checkpoint_names_the_unsupported_module(tmp_path):
    # It used to advise re-saving the checkpoint with the installed transformers: the very
    # version that wrote it. Its MoE layers load now; its MLA attention (value head dim 32,
    # key head dim 16) cannot share one paged KV cache. 2 layers, hidden 64.
    from autodeploy import LLM
    from autodeploy.custom_ops.attention.descriptor import UnsupportedAttentionError

    config = transformers.DeepseekV3Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1,
        first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=32, max_position_embeddings=128,
    )  # fmt: skip
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedAttentionError) as info:
        LLM(model=str(tmp_path), device="cpu", max_seq_len=64, max_batch_size=2)
    message = str(info.value)
    assert "module DeepseekV3Attention at 'model.layers.0.self_attn'" in message
    assert "disagree on num_kv_heads / head_dim" in message
    assert not any(bad in message for bad in BAD_ADVICE), message


def test_factory_build_failure_names_the_module_being_built(tmp_path, monkeypatch):
    from tiny_models import tiny_config

    tiny_config("llama").save_pretrained(tmp_path)
    modeling = transformers.models.llama.modeling_llama

    def refuse(self, *args, **kwargs):
        raise ValueError("activation 'glu2' is not implemented")

    monkeypatch.setattr(modeling.LlamaMLP, "__init__", refuse)
    with pytest.raises(UnsupportedModelError) as info:
        AutoModelForCausalLMFactory(str(tmp_path)).build_model("meta")
    message = str(info.value)
    assert "failed in module LlamaMLP: ValueError" in message
    assert "activation 'glu2' is not implemented" in message
    assert not any(bad in message for bad in BAD_ADVICE), message
