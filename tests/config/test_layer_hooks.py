"""The slot for intermediate layers (the model registry plugs in there) and env var hooks."""

from __future__ import annotations

import pytest

from autodeploy.config import (
    Layer,
    LayerContext,
    LlmArgs,
    register_non_config_env_var,
)
from autodeploy.config import layers as layers_module


@pytest.fixture
def registry_layer(monkeypatch):
    """A stand-in registry: for model 'org/big', sets a few values from 'registry:big.yaml'."""
    seen = {}

    def registry_layers(ctx: LayerContext) -> list[Layer]:
        seen["model"] = ctx.peek("model")
        if ctx.peek("model") != "org/big":
            return []
        return [
            Layer("registry:big.yaml", {"max_seq_len": 111, "world_size": 2, "dtype": "float16"})
        ]

    monkeypatch.setattr(layers_module, "INTERMEDIATE_LAYER_BUILDERS", [registry_layers])
    return seen


def test_intermediate_layer_sits_between_default_yaml_and_yaml_extra(registry_layer, write_yaml):
    a = write_yaml("a.yaml", "world_size: 4\n")
    args = LlmArgs(model="org/big", yaml_extra=[a], dtype="bfloat16")
    assert registry_layer["model"] == "org/big"  # peek sees the kwargs layer
    assert args.max_seq_len == 111  # registry over field default / default.yaml
    assert args.world_size == 4  # yaml_extra over registry
    assert args.dtype == "bfloat16"  # kwargs over registry
    assert args.layer_sources() == [
        "default.yaml",
        "registry:big.yaml",
        "yaml_extra:a.yaml",
        "kwargs",
    ]
    assert args.provenance()["max_seq_len"] == "registry:big.yaml"


def test_intermediate_layer_sees_model_from_yaml_extra(registry_layer, write_yaml):
    a = write_yaml("a.yaml", "model: org/big\n")
    assert LlmArgs(yaml_extra=[a]).max_seq_len == 111
    assert LlmArgs().max_seq_len == 2048


def test_registered_non_config_env_var_is_not_warned_about(monkeypatch, ad_logs):
    monkeypatch.setattr(
        layers_module, "NON_CONFIG_ENV_VARS", set(layers_module.NON_CONFIG_ENV_VARS)
    )
    register_non_config_env_var("AUTODEPLOY_SOMETHING_ELSE")
    monkeypatch.setenv("AUTODEPLOY_SOMETHING_ELSE", "1")
    LlmArgs()
    assert not [r for r in ad_logs.records if "AUTODEPLOY_SOMETHING_ELSE" in r.getMessage()]
