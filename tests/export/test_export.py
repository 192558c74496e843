"""Export of real HF architectures: exact logits, dynamic dims, original state dict loads."""

from __future__ import annotations

import pytest
import torch
from tiny_models import save_tiny, tiny_model

from autodeploy.export import set_graph_device, torch_export_to_gm
from autodeploy.models import ModelFactoryRegistry
from autodeploy.transforms import InferenceOptimizer
from autodeploy.utils.errors import ExportError

PIPELINE = {
    "build_model": {"stage": "factory"},
    "export_to_gm": {"stage": "export"},
    "cleanup_noop_slice": {"stage": "post_export"},
    "cleanup_noop_add": {"stage": "post_export"},
    "cleanup_input_constraints": {"stage": "post_export"},
}


def export_and_load(path):
    factory = ModelFactoryRegistry.get("AutoModelForCausalLM")(str(path))
    gm = InferenceOptimizer(factory, PIPELINE)(None)
    factory.load_or_random_init(gm, "cpu")
    set_graph_device(gm, "cpu")
    return gm


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_exported_logits_equal_hf_for_two_shapes(arch, tmp_path):
    hf = save_tiny(tmp_path, arch)
    gm = export_and_load(tmp_path)
    for batch, seq in ((2, 5), (3, 11)):  # different shapes: the dims are dynamic
        input_ids = torch.randint(0, 256, (batch, seq))
        position_ids = torch.arange(seq).repeat(batch, 1)
        expected = hf(input_ids=input_ids, position_ids=position_ids).logits
        got = gm(input_ids=input_ids, position_ids=position_ids)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_exported_graph_loads_the_original_state_dict(arch, tmp_path):
    hf = save_tiny(tmp_path, arch, tie_word_embeddings=True)
    gm = export_and_load(tmp_path)
    # Same keys as the source model (aliases of tied weights included), strict load works.
    assert set(gm.state_dict()) == set(hf.state_dict())
    for tensor in gm.parameters():
        tensor.data.zero_()
    gm.load_state_dict(hf.state_dict(), strict=True)
    input_ids = torch.randint(0, 256, (2, 6))
    position_ids = torch.arange(6).repeat(2, 1)
    torch.testing.assert_close(
        gm(input_ids=input_ids, position_ids=position_ids),
        hf(input_ids=input_ids, position_ids=position_ids).logits,
        atol=1e-5,
        rtol=0,
    )


def test_exported_graph_is_keyword_callable_and_returns_logits(tmp_path):
    save_tiny(tmp_path, "llama")
    gm = export_and_load(tmp_path)
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == [
        "input_ids",
        "position_ids",
    ]
    assert not any(
        "_guards_fn" in str(n.target) or "_assert" in str(n.target) for n in gm.graph.nodes
    )
    out = gm(
        input_ids=torch.zeros(1, 1, dtype=torch.long),
        position_ids=torch.zeros(1, 1, dtype=torch.long),
    )
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1, 256)


def test_load_hooks_survive_export():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4, bias=False)
            # Checkpoints store the weight doubled; the hook halves it on load.
            self.proj._register_load_state_dict_pre_hook(_halve_weight)

        def forward(self, x):
            return self.proj(x)

    model = Scaled()
    gm = torch_export_to_gm(model, {"x": torch.randn(2, 4)}, {"x": {0: torch.export.Dim.DYNAMIC}})
    gm.load_state_dict({"proj.weight": torch.full((4, 4), 2.0)})
    assert torch.equal(gm.proj.weight, torch.ones(4, 4))


def _halve_weight(state_dict, prefix, *args):
    state_dict[prefix + "weight"] = state_dict[prefix + "weight"] / 2


def test_export_failure_names_model_construct_and_hint():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # branch on tensor values: not exportable
                return x * 2
            return x

    with pytest.raises(ExportError) as err:
        torch_export_to_gm(
            DataDependent(),
            {"x": torch.randn(2, 3)},
            {"x": {0: torch.export.Dim.DYNAMIC}},
            model_name="DataDependent",
        )
    message = str(err.value)
    assert "torch.export failed for DataDependent" in message
    assert "test_export.py" in message and "x.sum() > 0" in message
    assert "Hint:" in message


def test_hf_eager_attention_without_mask_support_is_rejected(tmp_path):
    hf = tiny_model("llama")
    hf.config._attn_implementation = "autodeploy"
    from autodeploy.models.hf_attention import autodeploy_attention

    q = torch.randn(1, 4, 3, 16)
    with pytest.raises(ExportError, match="unknown_feature"):
        autodeploy_attention(
            hf.model.layers[0].self_attn, q, q[:, :2], q[:, :2], None, unknown_feature=1.0
        )
    with pytest.raises(ExportError, match="explicit attention mask"):
        autodeploy_attention(
            hf.model.layers[0].self_attn, q, q[:, :2], q[:, :2], torch.zeros(1, 1, 3, 3)
        )
