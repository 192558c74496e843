"""Experiment configuration of build_and_run: sections, file order, precedence, dry run."""

from __future__ import annotations

import re

import pytest

from autodeploy.tools import build_and_run
from autodeploy.utils.errors import ConfigError

INNER = """\
max_seq_len: 100
max_batch_size: 3
skip_loading_weights: true
"""
OUTER = """\
args:
  max_seq_len: 200
  model_kwargs: {num_hidden_layers: 1}
prompt:
  batch_size: 3
  sp_kwargs: {max_tokens: 4, top_k: 5}
benchmark:
  isl: 16
"""
OUTER2 = """\
prompt:
  sp_kwargs: {max_tokens: 6}
args:
  max_batch_size: 5
"""


@pytest.fixture
def files(write_yaml):
    return (
        write_yaml("inner.yaml", INNER),
        write_yaml("outer.yaml", OUTER),
        write_yaml("outer2.yaml", OUTER2),
    )


def test_every_file_is_read_with_the_documented_precedence(files):
    inner, outer, outer2 = files
    exp = build_and_run.resolve_experiment(
        ["--yaml-extra", outer, outer2, "--args.yaml-extra", inner]
    )
    args, sources = exp.args, exp.args.provenance()
    assert args.yaml_extra == [inner]
    assert args.skip_loading_weights is True and sources["skip_loading_weights"].endswith(inner)
    assert args.max_seq_len == 200 and sources["max_seq_len"] == f"yaml_extra:{outer}"
    assert args.max_batch_size == 5 and sources["max_batch_size"] == f"yaml_extra:{outer2}"
    assert args.model_kwargs == {"num_hidden_layers": 1}
    # sections deep-merge in file order: the later file wins per key
    assert exp.prompt.batch_size == 3
    assert exp.prompt.sp_kwargs == {"max_tokens": 6, "top_k": 5}
    assert exp.section_sources["prompt.batch_size"] == f"yaml_extra:{outer}"
    assert exp.section_sources["prompt.sp_kwargs.max_tokens"] == f"yaml_extra:{outer2}"
    assert exp.section_sources["prompt.sp_kwargs.top_k"] == f"yaml_extra:{outer}"
    assert exp.benchmark.isl == 16 and exp.section_sources["benchmark.osl"] == "default"
    layers = args.layer_sources()
    assert layers.index(f"yaml_extra:{inner}") < layers.index(f"yaml_extra:{outer}")


def test_command_line_and_environment_win_over_every_file(files, monkeypatch):
    inner, outer, _ = files
    argv = ["--yaml-extra", outer, "--args.yaml-extra", inner, "--prompt.batch-size=7"]
    exp = build_and_run.resolve_experiment([*argv, "--max-seq-len", "300"])
    assert exp.args.max_seq_len == 300 and exp.args.provenance()["max_seq_len"] == "cli"
    assert exp.prompt.batch_size == 7 and exp.section_sources["prompt.batch_size"] == "cli"
    monkeypatch.setenv("AUTODEPLOY_MAX_SEQ_LEN", "250")
    assert build_and_run.resolve_experiment(argv).args.max_seq_len == 250


def test_a_plain_llm_args_file_is_its_args_section(write_yaml):
    plain = write_yaml("plain.yaml", "max_seq_len: 64\nmodel_kwargs: {num_hidden_layers: 1}\n")
    exp = build_and_run.resolve_experiment(["--yaml-extra", plain])
    assert exp.args.max_seq_len == 64
    assert exp.args.provenance()["max_seq_len"] == f"yaml_extra:{plain}"
    assert exp.prompt.batch_size == 2  # untouched defaults


def test_model_shortcut_and_dry_run_flag_in_an_experiment_file(write_yaml):
    path = write_yaml("exp.yaml", "model: builtin:tiny-llama\ndry_run: true\nargs: {}\n")
    exp = build_and_run.resolve_experiment(["--yaml-extra", path])
    assert exp.dry_run is True and exp.args.provenance()["model"] == f"yaml_extra:{path}"


@pytest.mark.parametrize(
    "text, message",
    [
        ("args: {max_seq_len: 8}\nmax_batch_size: 2\n", r"line 2: 'max_batch_size' is not an"),
        ("args: {max_seq_len: 8}\npromt: {}\n", "Did you mean 'prompt'"),
        ("args: [1]\n", "section 'args' must be a mapping"),
        ("args: {yaml_extra: [a.yaml]}\n", "--args.yaml-extra"),
        ("prompt: {batchsize: 2}\n", "prompt.batchsize: unknown key .*exp.yaml.*batch_size"),
        ("benchmark: {isl: 0}\n", "benchmark.isl: Input should be greater than"),
    ],
)
def test_bad_experiment_files_name_the_file_and_key(write_yaml, text, message):
    path = write_yaml("exp.yaml", text)
    with pytest.raises(ConfigError, match=message):
        build_and_run.resolve_experiment(["--yaml-extra", path])


def test_missing_experiment_file_is_an_error():
    with pytest.raises(ConfigError, match="--yaml-extra file 'nope.yaml' not found"):
        build_and_run.resolve_experiment(["--yaml-extra", "nope.yaml"])
    with pytest.raises(ConfigError, match="needs at least one file"):
        build_and_run.resolve_experiment(["--yaml-extra", "--dry-run"])


@pytest.mark.parametrize(
    "argv, prompts",
    [
        (["--prompt.queries", "[[1,2,3],[4,5]]"], [[1, 2, 3], [4, 5]]),
        (["--prompt.queries", "[7, 8, 9]"], [[7, 8, 9], [7, 8, 9]]),
        (["--prompt.queries", "Hi", "[1, 2]"], ["Hi", [1, 2]]),
        (["--prompt.queries", "One"], ["One", "One"]),
    ],
)
def test_queries_accept_token_id_lists(argv, prompts):
    exp = build_and_run.resolve_experiment(argv)
    assert exp.prompt.prompts() == prompts


def test_dry_run_shows_every_value_with_its_source_file(files, capsys):
    inner, outer, outer2 = files
    argv = ["--yaml-extra", outer, outer2, "--args.yaml-extra", inner, "--dry-run"]
    assert build_and_run.main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(rf"\nmax_seq_len: 200 +# yaml_extra:{outer}\n", out)
    assert re.search(rf"\nskip_loading_weights: true +# yaml_extra:{inner}\n", out)
    assert re.search(rf"\n  batch_size: 3 +# yaml_extra:{outer}\n", out)
    assert re.search(rf"\n    max_tokens: 6 +# yaml_extra:{outer2}\n", out)
    assert re.search(rf"\n    top_k: 5 +# yaml_extra:{outer}\n", out)
    assert re.search(r"\n  num: 10 +# default\n", out)
