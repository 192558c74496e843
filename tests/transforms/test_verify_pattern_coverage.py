"""verify_pattern_coverage: the per-layer report, and errors that name layers and transforms."""

from __future__ import annotations

import copy

import pytest
import torch

from autodeploy.models import ModelFactoryRegistry
from autodeploy.transforms import InferenceOptimizer, SharedConfig
from autodeploy.utils.errors import BuildError, TransformError

MATCHERS = [
    "match_repeat_kv",
    "match_eager_attention",
    "match_sdpa_to_torch_attention",
    "match_grouped_attention",
    "match_attention_layout",
    "match_rope_pattern",
    "match_rope_layout",
    "eliminate_redundant_transposes",
    "match_rmsnorm_pattern",
]


def matchers(skip=(), **coverage):
    cfg = {name: {"stage": "pattern_matcher"} for name in MATCHERS if name not in skip}
    cfg["verify_pattern_coverage"] = {"stage": "pattern_matcher", **coverage}
    return cfg


@pytest.fixture(scope="module")
def sdpa_factory():
    return ModelFactoryRegistry.get("AutoModelForCausalLM")(
        "builtin:tiny-llama", model_kwargs={"attn_implementation": "sdpa"}
    )


@pytest.fixture(scope="module")
def exported(sdpa_factory):
    """tiny-llama exported through HF's sdpa code, before any matcher (built once)."""
    cfg = {"build_model": {"stage": "factory"}, "export_to_gm": {"stage": "export"}}
    return InferenceOptimizer(sdpa_factory, cfg, instruments=[])(None)


def run_matchers(factory, exported, cfg, **kwargs):
    return InferenceOptimizer(factory, cfg, instruments=[], **kwargs)(None, copy.deepcopy(exported))


@pytest.fixture(scope="module")
def matched(sdpa_factory, exported):
    return run_matchers(sdpa_factory, exported, matchers())


def test_clean_report_is_stored_on_the_graph(matched, sdpa_factory):
    coverage = matched.meta["autodeploy_coverage"]
    summary, text = coverage["summary"], coverage["text"]
    layers = sdpa_factory.model_config.num_hidden_layers
    assert summary["expected_attention_layers"] == list(range(layers))
    assert summary["missing_attention_layers"] == [] and summary["missing_rope_layers"] == []
    assert summary["norms"] == {"rmsnorm": 2 * layers + 1}
    assert f"attention: {layers}/{layers} layers -> torch_attention [{layers}x causal, bsnd" in text
    assert f"rope: {layers}/{layers} layers" in text


def test_unmatched_attention_is_an_error_naming_layers_and_transform(sdpa_factory, exported):
    with pytest.raises(TransformError) as err:
        run_matchers(sdpa_factory, exported, matchers(skip={"match_sdpa_to_torch_attention"}))
    message = str(err.value)
    assert "attention matched in 0 of 2 layers" in message
    assert "model.layers.0.self_attn" in message and "model.layers.1.self_attn" in message
    assert "match_sdpa_to_torch_attention" in message and "on_mismatch: warn" in message


def test_warn_mode_records_a_problem_and_strict_mode_refuses(sdpa_factory, exported):
    shared = SharedConfig()
    cfg = matchers(skip={"match_sdpa_to_torch_attention"}, on_mismatch="warn")
    gm = run_matchers(sdpa_factory, exported, cfg, shared_config=shared)
    assert [p.transform for p in shared.problems] == ["verify_pattern_coverage"]
    assert gm.meta["autodeploy_coverage"]["summary"]["missing_attention_layers"] == [0, 1]
    with pytest.raises(BuildError, match="strict mode"):
        run_matchers(sdpa_factory, exported, cfg, strict=True)


class ConfigOverride:
    """A factory stand-in whose config claims features the graph lacks."""

    def __init__(self, config, **changes):
        self.model_config = copy.deepcopy(config)
        for key, value in changes.items():
            setattr(self.model_config, key, value)


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"sliding_window": 4, "layer_types": None}, "sliding window differs"),
        ({"attn_logit_softcapping": 30.0}, "soft-capping differs"),
        ({"num_key_value_heads": 1}, "kv heads differ"),
    ],
)
def test_features_the_config_declares_must_survive(matched, sdpa_factory, changes, expected):
    from autodeploy.transforms import TransformInfo, TransformRegistry

    verify = TransformRegistry.get("verify_pattern_coverage").from_kwargs(stage="pattern_matcher")
    factory = ConfigOverride(sdpa_factory.model_config, **changes)
    with pytest.raises(TransformError, match=expected):
        verify(copy.deepcopy(matched), None, factory, SharedConfig(), TransformInfo())


def test_missing_rope_is_reported(sdpa_factory, exported):
    shared = SharedConfig()
    gm = run_matchers(
        sdpa_factory, exported, matchers(skip={"match_rope_pattern"}), shared_config=shared
    )
    assert gm.meta["autodeploy_coverage"]["summary"]["missing_rope_layers"] == [0, 1]
    assert any("match_rope_pattern" in p.message for p in shared.problems)
    assert torch.ops.auto_deploy.torch_attention.default in {n.target for n in gm.graph.nodes}
