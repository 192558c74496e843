"""Checks run when the settings resolve: the tokenizer source, trust_remote_code's warning."""

from __future__ import annotations

import json

import pytest

from autodeploy.config import LlmArgs
from autodeploy.utils.errors import ConfigError


@pytest.mark.parametrize("tokenizer", ["./no/such/tokenizer", "/nowhere/tok", "org/name/extra"])
def test_bad_tokenizer_path_fails_before_the_build(tokenizer):
    # It used to be reported only after the whole build.
    with pytest.raises(ConfigError, match=r"tokenizer \(from kwargs\): tokenizer path .* does not"):
        LlmArgs(tokenizer=tokenizer)


def test_tokenizer_directory_must_hold_a_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match="holds no tokenizer"):
        LlmArgs(tokenizer=str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{}")
    assert LlmArgs(tokenizer=str(tmp_path)).tokenizer == str(tmp_path)


def test_uncached_hub_id_fails_at_once():
    with pytest.raises(ConfigError, match="neither a local directory nor in the local Hugging"):
        LlmArgs(tokenizer="no-such-org/no-such-tokenizer-xyz")


def test_builtin_tokenizer_is_accepted():
    assert LlmArgs(tokenizer="builtin:tiny-llama").tokenizer == "builtin:tiny-llama"


def test_remote_code_from_yaml_extra_is_announced(tmp_path, ad_logs):
    # trust_remote_code from a yaml_extra file used to run the checkpoint's code silently.
    model = tmp_path / "model"
    model.mkdir()
    auto_map = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (model / "config.json").write_text(json.dumps({"auto_map": auto_map}))
    extra = tmp_path / "extra.yaml"
    extra.write_text("trust_remote_code: true\n")
    LlmArgs(model=str(model), yaml_extra=[str(extra)])
    warnings = [r.getMessage() for r in ad_logs.records if r.levelname == "WARNING"]
    assert any(
        f"from yaml_extra:{extra}, line 1" in m and "modeling_custom.CustomForCausalLM" in m
        for m in warnings
    ), warnings
    ad_logs.clear()
    LlmArgs(model=str(model))
    assert not [r for r in ad_logs.records if "trust_remote_code" in r.getMessage()]
