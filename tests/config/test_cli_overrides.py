"""Dot-notation command-line overrides (autodeploy.config.cli)."""

from __future__ import annotations

import pytest

from autodeploy.config import LlmArgs, cli_help_text, parse_cli
from autodeploy.utils.errors import ConfigError


def test_shorthand_and_yaml_extra_list():
    parsed = parse_cli(["--model", "some/model", "--yaml-extra", "a.yaml", "b.yaml"])
    assert parsed == {"args": {"model": "some/model", "yaml_extra": ["a.yaml", "b.yaml"]}}


def test_nested_kebab_case_keys_become_snake_case():
    parsed = parse_cli(
        [
            "--args.model-kwargs.num-hidden-layers=2",
            "--args.transforms.export-to-gm.strict=true",
            "--args.kv-cache-config.tokens-per-block",
            "8",
        ]
    )
    assert parsed["args"] == {
        "model_kwargs": {"num_hidden_layers": 2},
        "transforms": {"export_to_gm": {"strict": True}},
        "kv_cache_config": {"tokens_per_block": 8},
    }


@pytest.mark.parametrize(
    "form",
    [
        ["--args.max-seq-len=512"],
        ["--args.max-seq-len", "512"],
        ["--max-seq-len", "512"],
        ["--max_seq_len=512"],
    ],
)
def test_equals_and_space_forms_are_the_same(form):
    assert parse_cli(form) == {"args": {"max_seq_len": 512}}


@pytest.mark.parametrize(
    "raw, value",
    [
        ("[1,2]", [1, 2]),
        ("[1, 2, 4]", [1, 2, 4]),
        ("true", True),
        ("false", False),
        ("2", 2),
        ("0.5", 0.5),
        ("bfloat16", "bfloat16"),
        ("null", None),
        ("{a: 1}", {"a": 1}),
        ("builtin:tiny-llama", "builtin:tiny-llama"),
        ("-1", -1),
    ],
)
def test_values_are_yaml_scalars(raw, value):
    assert parse_cli([f"--args.model-kwargs.x={raw}"])["args"]["model_kwargs"]["x"] == value
    assert parse_cli(["--args.model-kwargs.x", raw])["args"]["model_kwargs"]["x"] == value


def test_several_values_make_a_list_and_repeated_options_merge():
    parsed = parse_cli(
        [
            "--cuda-graph-batch-sizes",
            "1",
            "2",
            "4",
            "--args.model-kwargs.a=1",
            "--args.model-kwargs.b=2",
            "--args.model-kwargs.a=3",
        ]
    )
    assert parsed["args"] == {"cuda_graph_batch_sizes": [1, 2, 4], "model_kwargs": {"a": 3, "b": 2}}


def test_tool_groups_and_flags():
    parsed = parse_cli(
        [
            "--prompt.batch-size",
            "4",
            "--benchmark.enabled",
            "--dry-run",
            "--out",
            "dir",
            "--model",
            "m",
        ],
        groups=["prompt", "benchmark"],
        flags=["dry_run", "out"],
    )
    assert parsed == {
        "args": {"model": "m"},
        "prompt": {"batch_size": 4},
        "benchmark": {"enabled": True},
        "dry_run": True,
        "out": "dir",
    }


def test_group_given_as_a_whole_mapping():
    parsed = parse_cli(
        ["--prompt={batch_size: 2}", "--prompt.queries", "[a, b]"], groups=["prompt"]
    )
    assert parsed["prompt"] == {"batch_size": 2, "queries": ["a", "b"]}
    with pytest.raises(ConfigError, match=r"--prompt: expected a mapping"):
        parse_cli(["--prompt", "3"], groups=["prompt"])


def test_unknown_flag_suggests_the_close_setting():
    with pytest.raises(ConfigError) as info:
        parse_cli(["--max-seq-lenn", "5"])
    assert "Unknown option '--max-seq-lenn'. Did you mean '--max-seq-len'?" in str(info.value)


def test_unknown_args_key_suggests():
    with pytest.raises(ConfigError) as info:
        parse_cli(["--args.model-kwarg.x=1"])
    text = str(info.value)
    assert "Unknown option '--args.model-kwarg.x': 'model_kwarg' is not an LlmArgs setting." in text
    assert "Did you mean '--args.model-kwargs' or" in text


def test_unknown_group_suggests_allowed_group():
    with pytest.raises(ConfigError) as info:
        parse_cli(["--promt.batch-size=2"], groups=["prompt"])
    text = str(info.value)
    assert "Did you mean '--prompt.<key>'?" in text
    assert "--prompt.<key>" in text and "--args.<key>" in text


def test_unknown_tool_flag_suggests():
    with pytest.raises(ConfigError, match=r"Did you mean '--dry-run'\?"):
        parse_cli(["--dryrun"], flags=["dry_run"])
    with pytest.raises(ConfigError, match=r"--dry-run takes no sub-keys"):
        parse_cli(["--dry-run.x"], flags=["dry_run"])


def test_positional_argument_is_an_error():
    with pytest.raises(ConfigError, match=r"Unexpected command-line argument 'model'"):
        parse_cli(["model", "--max-seq-len", "4"])


def test_help():
    assert parse_cli(["-h"])["help"] is True
    text = cli_help_text(groups=["prompt"], flags=["dry_run"])
    assert "--max-seq-len" in text and "--prompt.<key>" in text and "--dry-run" in text


def test_cli_values_land_in_the_cli_layer(write_yaml):
    a = write_yaml("a.yaml", "max_seq_len: 100\n")
    parsed = parse_cli(
        [
            "--yaml-extra",
            a,
            "--args.max-seq-len=256",
            "--args.transforms._test_cfg-dummy-b.sizes",
            "[4]",
            "--args.kv-cache-config.dtype",
            "bfloat16",
        ]
    )
    args = LlmArgs.from_cli(parsed["args"], max_seq_len=64)
    assert args.max_seq_len == 256
    assert args.transforms["_test_cfg_dummy_b"]["sizes"] == [4]
    prov = args.provenance()
    assert prov["max_seq_len"] == "cli"
    assert prov["yaml_extra"] == "cli"
    assert prov["transforms._test_cfg_dummy_b.sizes"] == "cli"
    assert prov["kv_cache_config.dtype"] == "cli"


def test_cli_single_yaml_extra_and_errors_name_cli():
    with pytest.raises(ConfigError, match=r"yaml_extra file 'x\.yaml' not found \(listed in cli"):
        LlmArgs.from_cli(parse_cli(["--yaml-extra", "x.yaml"])["args"])
    with pytest.raises(ConfigError, match=r"max_batch_size: .* \(got 'many'\) \(from cli\)"):
        LlmArgs.from_cli(parse_cli(["--max-batch-size", "many"])["args"])
