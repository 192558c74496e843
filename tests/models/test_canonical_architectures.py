"""Every listed HF architecture, exported and pattern-matched through the real pipeline.

Checks per architecture: one ``torch_attention`` per layer with the model's features (sliding
window, soft-cap, scaling, GQA), the expected RoPE op on every layer, the expected norm ops, a
clean coverage report, and logits equal to Hugging Face eager (fp32, atol 1e-4). A few
architectures also go through HF's own ``sdpa`` / ``eager`` attention code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import ARCHITECTURES, save_tiny

import autodeploy.config
from autodeploy.models import ModelFactoryRegistry
from autodeploy.transforms import InferenceOptimizer, Stages
from autodeploy.transforms.graph_utils import count_ops, find_nodes
from autodeploy.transforms.pattern import bound_args

ad = torch.ops.auto_deploy
aten = torch.ops.aten

# arch -> (RMSNorm ops expected, RoPE op expected)
EXPECTED = {
    "llama": (5, ad.torch_rope_with_explicit_cos_sin),
    "mistral": (5, ad.torch_rope_with_explicit_cos_sin),
    "qwen2": (5, ad.torch_rope_with_explicit_cos_sin),
    "qwen3": (9, ad.torch_rope_with_explicit_cos_sin),  # + q/k norms
    "phi3": (5, ad.torch_rope_with_explicit_cos_sin),
    "gemma": (5, ad.torch_rope_with_explicit_cos_sin),
    "gemma2": (9, ad.torch_rope_with_explicit_cos_sin),  # pre/post norms around both blocks
    "granite": (5, ad.torch_rope_with_explicit_cos_sin),
    "olmo2": (9, ad.torch_rope_with_explicit_cos_sin),  # + q/k norms over all heads
    "starcoder2": (0, ad.torch_rope_with_explicit_cos_sin),  # LayerNorm
    "gpt_neox": (0, ad.torch_rope_with_explicit_cos_sin),  # LayerNorm, partial rotary
    "phi": (0, ad.torch_rope_with_explicit_cos_sin),  # LayerNorm, partial rotary
    "smollm3": (5, ad.torch_rope_with_explicit_cos_sin),
    "glm": (5, ad.torch_rope_with_complex_freqs),  # interleaved pairs, partial rotary
}
assert set(EXPECTED) == set(ARCHITECTURES)


def pipeline() -> dict:
    """default.yaml up to and including pattern_matcher, then weights on the CPU."""
    path = Path(autodeploy.config.__file__).parent / "default.yaml"
    transforms = yaml.safe_load(path.read_text())["transforms"]
    last = Stages.PATTERN_MATCHER.order
    cfg = {k: v for k, v in transforms.items() if Stages(v["stage"]).order <= last}
    cfg["load_weights"] = {"stage": "weight_load", "device": "cpu"}
    return cfg


def build(tmp_path_factory, arch: str, attn_implementation: str = "autodeploy"):
    path = tmp_path_factory.mktemp(arch)
    model = save_tiny(path, arch)
    factory = ModelFactoryRegistry.get("AutoModelForCausalLM")(
        str(path), model_kwargs={"attn_implementation": attn_implementation}
    )
    gm = InferenceOptimizer(factory, pipeline(), instruments=[])(None)
    return model, gm


def assert_logits_match(model, gm):
    ids = torch.randint(3, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(11).expand(2, 11)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        torch.testing.assert_close(
            gm(input_ids=ids, position_ids=positions), expected, atol=1e-4, rtol=1e-4
        )


def attention_args(gm) -> list[dict]:
    return [bound_args(n) for n in find_nodes(gm, ad.torch_attention.default)]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture_is_canonical_and_exact(tmp_path_factory, arch):
    model, gm = build(tmp_path_factory, arch)
    config = model.config
    num_norms, rope_op = EXPECTED[arch]

    attention = attention_args(gm)
    assert len(attention) == config.num_hidden_layers
    assert all(a["layout"] == "bsnd" and a["is_causal"] for a in attention)
    assert count_ops(gm, rope_op) == config.num_hidden_layers
    assert count_ops(gm, ad.torch_rmsnorm) == num_norms
    assert count_ops(gm, (aten.softmax, aten.scaled_dot_product_attention, aten.neg)) == 0
    assert count_ops(gm, aten.transpose) == 0  # layouts agree end to end

    coverage = gm.meta["autodeploy_coverage"]["summary"]
    assert coverage["missing_attention_layers"] == [] and coverage["missing_rope_layers"] == []
    assert coverage["unmatched_norm_modules"] == [] and not coverage["feature_mismatches"]
    assert [s["layer"] for s in coverage["attention"]] == list(range(config.num_hidden_layers))

    windows = [a["sliding_window"] for a in attention]
    caps = [a["logit_cap"] for a in attention]
    if arch == "mistral":
        assert windows == [8, 8]
    elif arch == "gemma2":  # alternating sliding / global layers, soft-capped scores
        assert windows == [8, None] and caps == [50.0, 50.0]
        assert attention[0]["scale"] == pytest.approx(16**-0.5)
    else:
        assert windows == [None, None] and caps == [None, None]
    if arch == "granite":
        assert attention[0]["scale"] == pytest.approx(0.2)
    assert_logits_match(model, gm)


@pytest.mark.parametrize(
    "arch,attn_implementation",
    [
        ("llama", "sdpa"),  # sdpa + repeat_kv
        ("qwen3", "eager"),  # eager attention with q/k norms
        ("phi", "sdpa"),  # partial rotary, no GQA
    ],
)
def test_hf_attention_code_is_matched_too(tmp_path_factory, arch, attn_implementation):
    model, gm = build(tmp_path_factory, arch, attn_implementation)
    attention = attention_args(gm)
    assert len(attention) == model.config.num_hidden_layers
    assert count_ops(gm, (ad.torch_attention_repeat_kv, aten.softmax, aten.expand)) == 0
    kv_heads = getattr(model.config, "num_key_value_heads", model.config.num_attention_heads)
    assert all(a["key"].meta["val"].shape[2] == kv_heads for a in attention)  # GQA in the op
    assert count_ops(gm, EXPECTED[arch][1]) == model.config.num_hidden_layers
    assert_logits_match(model, gm)
