"""Where each resolved value came from, and the printed configuration."""

from __future__ import annotations

import io

import yaml

from autodeploy.config import (
    LlmArgs,
    format_resolved_config,
    parse_yaml_text,
    print_resolved_config,
)


def _args_from_every_layer(write_yaml, monkeypatch) -> LlmArgs:
    a = write_yaml(
        "a.yaml", "max_seq_len: 100\ndtype: float16\nkv_cache_config: {dtype: float16}\n"
    )
    b = write_yaml("b.yaml", "max_seq_len: 200\nmodel_kwargs: {num_hidden_layers: 2}\n")
    monkeypatch.setenv("AUTODEPLOY_KV_CACHE_CONFIG__TOKENS_PER_BLOCK", "8")
    monkeypatch.setenv("AUTODEPLOY_WORLD_SIZE", "2")
    return LlmArgs.from_cli({"device": "cpu"}, yaml_extra=[a, b], max_batch_size=2)


def test_provenance_of_each_layer(write_yaml, monkeypatch):
    prov = _args_from_every_layer(write_yaml, monkeypatch).provenance()
    assert prov["model"] == "default"
    assert prov["transforms._test_cfg_dummy_a.stage"] == "default.yaml"
    assert prov["dtype"] == "yaml_extra:a.yaml"
    assert prov["kv_cache_config.dtype"] == "yaml_extra:a.yaml"
    assert prov["max_seq_len"] == "yaml_extra:b.yaml"
    assert prov["model_kwargs.num_hidden_layers"] == "yaml_extra:b.yaml"
    assert (
        prov["kv_cache_config.tokens_per_block"]
        == "env:AUTODEPLOY_KV_CACHE_CONFIG__TOKENS_PER_BLOCK"
    )
    assert prov["world_size"] == "env:AUTODEPLOY_WORLD_SIZE"
    assert prov["max_batch_size"] == "kwargs"  # over the test default.yaml's value
    assert prov["yaml_extra"] == "kwargs"
    assert prov["device"] == "cli"
    assert prov["max_num_tokens"] == "derived"
    assert prov["attn_backend"] == "default.yaml"  # synced from the transform


def test_provenance_covers_every_leaf(write_yaml, monkeypatch):
    args = _args_from_every_layer(write_yaml, monkeypatch)
    prov = args.provenance()
    assert "kv_cache_config.max_tokens" in prov and "transforms._test_cfg_dummy_b.sizes" in prov
    assert "kv_cache_config" not in prov  # mappings are not leaves
    assert prov["tokenizer_kwargs"] == "default"  # an empty mapping is a leaf


def test_layer_sources_in_order(write_yaml, monkeypatch):
    args = _args_from_every_layer(write_yaml, monkeypatch)
    assert args.layer_sources() == [
        "default.yaml",
        "yaml_extra:a.yaml",
        "yaml_extra:b.yaml",
        "env:AUTODEPLOY_WORLD_SIZE",
        "env:AUTODEPLOY_KV_CACHE_CONFIG__TOKENS_PER_BLOCK",
        "kwargs",
        "cli",
    ]


def test_env_more_specific_variable_wins(monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_KV_CACHE_CONFIG", '{"tokens_per_block": 4, "dtype": "float16"}')
    monkeypatch.setenv("AUTODEPLOY_KV_CACHE_CONFIG__TOKENS_PER_BLOCK", "8")
    args = LlmArgs()
    assert args.kv_cache_config.tokens_per_block == 8
    assert args.kv_cache_config.dtype == "float16"
    assert args.provenance()["kv_cache_config.dtype"] == "env:AUTODEPLOY_KV_CACHE_CONFIG"


def test_yaml_format_has_a_source_comment_on_every_value(write_yaml, monkeypatch):
    args = _args_from_every_layer(write_yaml, monkeypatch)
    text = format_resolved_config(args)
    lines = text.splitlines()
    assert lines[0].startswith("# Resolved autodeploy configuration")
    assert "#   yaml_extra:a.yaml" in lines
    assert any(line.startswith("device: cpu") and line.endswith("# cli") for line in lines)
    assert any(
        line.strip().startswith("tokens_per_block: 8")
        and line.endswith("# env:AUTODEPLOY_KV_CACHE_CONFIG__TOKENS_PER_BLOCK")
        for line in lines
    )
    assert any(
        line.startswith("max_num_tokens: 2048") and line.endswith("# derived") for line in lines
    )
    body = [line for line in lines if line and not line.startswith("#")]
    for line in body:
        if not line.rstrip().endswith(":"):  # every leaf line carries its source
            assert "  # " in line, line


def test_yaml_format_reads_back_as_the_config(write_yaml, monkeypatch):
    args = _args_from_every_layer(write_yaml, monkeypatch)
    data, _ = parse_yaml_text(format_resolved_config(args), "printed")
    expected = args.to_dict()
    expected.pop("yaml_extra")  # shown in the header only, a YAML file cannot set it
    assert data == expected
    assert yaml.safe_load(format_resolved_config(args)) == expected


def test_yaml_format_can_be_used_as_yaml_extra(write_yaml, monkeypatch):
    args = _args_from_every_layer(write_yaml, monkeypatch)
    for name in ("AUTODEPLOY_KV_CACHE_CONFIG__TOKENS_PER_BLOCK", "AUTODEPLOY_WORLD_SIZE"):
        monkeypatch.delenv(name)
    saved = write_yaml("saved.yaml", format_resolved_config(args))
    again = LlmArgs(yaml_extra=[saved])
    assert {**again.to_dict(), "yaml_extra": []} == {**args.to_dict(), "yaml_extra": []}


def test_table_format(write_yaml, monkeypatch):
    args = _args_from_every_layer(write_yaml, monkeypatch)
    text = format_resolved_config(args, style="table")
    rows = [line.split() for line in text.splitlines()]
    assert rows[0] == ["key", "value", "source"]
    assert ["device", "cpu", "cli"] in rows
    assert ["model_kwargs.num_hidden_layers", "2", "yaml_extra:b.yaml"] in rows
    assert ["transforms._test_cfg_dummy_b.sizes", "[1,", "2,", "3]", "default.yaml"] in rows


def test_include_transform_defaults_shows_every_transform_field():
    args = LlmArgs(transforms={"_test_cfg_dummy_a": {"enabled": False}})
    text = format_resolved_config(args, include_transform_defaults=True)
    lines = [line.strip() for line in text.splitlines()]
    assert any(line.startswith("enabled: false") and line.endswith("# kwargs") for line in lines)
    assert any(
        line.startswith("skip_on_error: false") and line.endswith("# default") for line in lines
    )


def test_print_resolved_config_writes_the_text():
    args = LlmArgs()
    stream = io.StringIO()
    print_resolved_config(args, file=stream)
    assert stream.getvalue() == format_resolved_config(args)
