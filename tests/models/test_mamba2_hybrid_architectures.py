"""The mamba2_mixer export patch: every Mamba-2 mixer becomes torch_causal_conv1d + torch_ssm +
torch_rmsnorm_gated (one each per mixer layer, one torch_attention per attention layer, from the
model's layer pattern), the graph equals Hugging Face eager, and a mixer that computes something
else fails the export naming its class."""

from __future__ import annotations

import pytest
import torch
import transformers
from test_canonical_architectures import build
from tiny_models import _COMMON

from autodeploy.models import ModelFactoryRegistry
from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import count_ops
from autodeploy.utils.errors import ExportError

ad = torch.ops.auto_deploy

# arch -> (mixer layers, attention layers) from its layer pattern in tiny_models.py
LAYERS = {
    "mamba2": ([0, 1], []),
    "nemotron_h": ([0], [1]),  # mamba, attention, mlp
    "bamba": ([0], [1]),
    "granitemoehybrid": ([0], [1]),  # dense variant (no experts)
    "zamba2": ([0, 1], [1]),  # the hybrid layer runs the shared attention block and a mixer
}


@pytest.mark.parametrize("arch", list(LAYERS))
def test_mixers_export_as_canonical_ops_and_match_hugging_face(tmp_path_factory, arch):
    model, gm = build(tmp_path_factory, arch)
    mixers, attention = LAYERS[arch]
    assert count_ops(gm, ad.torch_ssm) == len(mixers)
    assert count_ops(gm, ad.torch_causal_conv1d) == len(mixers)
    assert count_ops(gm, ad.torch_rmsnorm_gated) == len(mixers)
    assert count_ops(gm, ad.torch_attention) == len(attention)
    coverage = gm.meta["autodeploy_coverage"]["summary"]
    assert coverage["ssm"]["expected_layers"] == mixers
    assert coverage["ssm"]["ssm_layers"] == mixers == coverage["ssm"]["conv_layers"]
    assert coverage["expected_attention_layers"] == attention
    assert coverage["missing_attention_layers"] == []
    ids = torch.randint(3, 256, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = gm(input_ids=ids, position_ids=torch.arange(19).expand(2, 19))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_an_unsupported_mixer_fails_naming_its_class(tmp_path):
    config = transformers.FalconH1Config(
        **{**_COMMON, "num_key_value_heads": 2, "mamba_d_ssm": 128, "mamba_n_heads": 8},
        mamba_d_head=16,
        mamba_n_groups=2,
        mamba_d_state=16,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    factory = ModelFactoryRegistry.get("AutoModelForCausalLM")(str(tmp_path))
    cfg = {"build_model": {"stage": "factory"}, "export_to_gm": {"stage": "export"}}
    with pytest.raises(ExportError, match="FalconH1Mixer is not supported.*ssm_multipliers"):
        InferenceOptimizer(factory, cfg, instruments=[])(None)
