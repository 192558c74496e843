"""fuse_gemms: q/k/v and gate/up linears become one GEMM each; outputs and checkpoint loading
are unchanged."""

import pytest
import torch
import torch.nn as nn
from fusion_helpers import apply, hf_logits, loaded_graph, logits, op_counts, sample_inputs
from tiny_models import tiny_model
from torch.export import Dim

from autodeploy.export import torch_export_to_gm

aten = torch.ops.aten
NUM_LAYERS = 2


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_each_layer_gets_one_qkv_and_one_gate_up_gemm(arch):
    gm, hf_model = loaded_graph(arch)
    inputs = sample_inputs()
    before = logits(gm, inputs)
    assert op_counts(gm, linear=aten.linear)["linear"] == 7 * NUM_LAYERS + 1
    gm, info = apply(gm, "fuse_gemms")

    assert info.num_matches == 2 * NUM_LAYERS
    # qkv, o, gate_up, down per layer, plus the output head
    assert op_counts(gm, linear=aten.linear)["linear"] == 4 * NUM_LAYERS + 1
    assert op_counts(gm, slices=aten.slice.Tensor)["slices"] == 5 * NUM_LAYERS
    params = dict(gm.named_parameters())
    head_dim, heads, kv_heads = 16, 4, 2
    qkv = params["model.layers.0.self_attn.fused_q_proj_k_proj_v_proj.weight"]
    assert qkv.shape == ((heads + 2 * kv_heads) * head_dim, 64)
    assert params["model.layers.1.mlp.fused_gate_proj_up_proj.weight"].shape == (2 * 128, 64)
    if arch == "qwen2":  # q/k/v biases are fused too
        assert params["model.layers.0.self_attn.fused_q_proj_k_proj_v_proj.bias"].shape == (128,)
    assert not any(".q_proj." in name or ".up_proj." in name for name in params)

    after = logits(gm, inputs)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, hf_logits(hf_model, inputs), atol=1e-4, rtol=1e-4)


def test_original_checkpoint_still_loads_into_the_fused_graph():
    gm, hf_model = loaded_graph("qwen2")
    gm, _ = apply(gm, "fuse_gemms")
    inputs = sample_inputs(seed=3)
    fused_before = logits(gm, inputs)

    other = tiny_model("qwen2", seed=7)  # different weights, original HF keys
    result = gm.load_state_dict(other.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(logits(gm, inputs), hf_logits(other, inputs), atol=1e-4, rtol=1e-4)

    gm.load_state_dict(hf_model.state_dict(), strict=True)  # back to the original weights
    torch.testing.assert_close(logits(gm, inputs), fused_before, atol=1e-5, rtol=1e-5)
    gm.load_state_dict(gm.state_dict(), strict=True)  # the fused keys load as they are
    torch.testing.assert_close(logits(gm, inputs), fused_before, atol=1e-5, rtol=1e-5)


class _SharedWeight(nn.Module):
    """Three linears read x; ``tied`` also serves as a second linear's weight."""

    def __init__(self):
        super().__init__()
        self.tied = nn.Linear(8, 6, bias=False)
        self.alone = nn.Linear(8, 5, bias=False)
        self.with_bias = nn.Linear(8, 4)

    def forward(self, x):
        reuse = torch.nn.functional.linear(x, self.tied.weight)
        return (
            self.tied(x).sum(-1) + reuse.sum(-1) + self.alone(x).sum(-1) + self.with_bias(x).sum(-1)
        )


def test_tied_weights_and_unmatched_biases_are_left_alone():
    model = _SharedWeight().eval()
    x = torch.randn(3, 8)
    gm = torch_export_to_gm(model, {"x": x}, {"x": {0: Dim.DYNAMIC}})
    gm, info = apply(gm, "fuse_gemms")
    # `tied` is used twice and `with_bias` is the only linear with a bias: nothing to group
    assert info.skipped and info.num_matches == 0
    assert op_counts(gm, linear=aten.linear)["linear"] == 4
    torch.testing.assert_close(gm(x), model(x))
