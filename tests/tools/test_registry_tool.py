"""python -m autodeploy.tools.registry: list, show, resolve (hub name and local directory), check.

The three commands run as real subprocesses (started together; each pays the package import,
several seconds, so ``resolve`` runs once there, on a local directory); resolving a hub name,
error paths and the other options run in-process through ``main``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import transformers
import yaml

from autodeploy.config.model_registry import PACKAGE_DIR, load_registry
from autodeploy.tools.registry import main

REGISTRY = load_registry(PACKAGE_DIR)
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
QWEN3 = "Qwen/Qwen3-0.6B"


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory) -> Path:
    """A local directory (config only) with Qwen3-0.6B's shapes, under an unrelated name."""
    directory = tmp_path_factory.mktemp("registry_tool") / "my-checkpoint"
    shapes = REGISTRY.lookup(QWEN3).architecture.attributes
    transformers.Qwen3Config(num_attention_heads=16, **shapes).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def runs(qwen3_dir) -> dict[str, subprocess.CompletedProcess]:
    commands = {
        "list": ["list"],
        "show": ["show", LLAMA_8B],
        "resolve_dir": ["resolve", str(qwen3_dir), "--world-size", "2"],
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTODEPLOY_")}
    env.update(HF_HUB_OFFLINE="1", AUTODEPLOY_LOG_LEVEL="WARNING")
    procs = {
        key: subprocess.Popen(
            [sys.executable, "-m", "autodeploy.tools.registry", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for key, argv in commands.items()
    }
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def test_list_shows_every_entry(runs):
    result = runs["list"]
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    enabled = sum(e.enabled for e in REGISTRY.entries)
    assert lines[0].startswith(f"{len(REGISTRY.entries)} entries ({enabled} enabled")
    header = next(i for i, line in enumerate(lines) if line.startswith("name "))
    rows = lines[header + 1 : header + 1 + len(REGISTRY.entries)]
    for entry, row in zip(REGISTRY.entries, rows):
        assert row.split()[:2] == [entry.name, entry.config_id]
        assert row.rstrip().endswith("enabled") == entry.enabled
    assert "Templates (no entry may use them yet):" in result.stdout
    assert "simple_shard_only.yaml:" in result.stdout


def test_show_prints_every_variant_with_its_files(runs):
    result = runs["show"]
    assert result.returncode == 0, result.stderr
    variants = REGISTRY.entries_named(LLAMA_8B)
    for entry in variants:
        assert f"{LLAMA_8B}  [config_id: {entry.config_id}]" in result.stdout
    assert "(world_size=2, max_seq_len=8192, max_batch_size=64)" in result.stdout
    assert "--- configs/llama3_1_8b.yaml" in result.stdout
    content = (PACKAGE_DIR / "configs" / "llama3_1_8b.yaml").read_text().splitlines()
    assert all(f"    {line}".rstrip() in result.stdout for line in content)


def test_resolve_a_local_directory_by_its_config(runs, qwen3_dir):
    result = runs["resolve_dir"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"entry:      {QWEN3}" in out
    assert f"matched:    by architecture of {qwen3_dir}" in out
    assert "world_size            1                     2                     cli" in out
    assert "(registry proposed 1)" in out
    values = yaml.safe_load(out.split("merged configuration:\n", 1)[1])
    assert values["model"] == str(qwen3_dir) and values["world_size"] == 2


# ----------------------------------------------------------------------------- in-process


def test_resolve_a_hub_name(capsys, monkeypatch):
    monkeypatch.delenv("TORCH_NCCL_AVOID_RECORD_STREAMS", raising=False)
    assert main(["resolve", LLAMA_8B]) == 0
    out = capsys.readouterr().out
    assert f"entry:      {LLAMA_8B}" in out and "matched:    by name" in out
    files = REGISTRY.lookup(LLAMA_8B).yaml_extra
    assert "layers:     default.yaml, " + ", ".join(f"registry:{f}" for f in files) in out
    assert "a known-good deployment" in out
    # applied settings table, then the merged config with a source on every value
    table = out.split("applied settings:\n", 1)[1].split("\nmerged configuration:", 1)[0]
    assert table.splitlines()[0].split() == ["setting", "default", "applied", "source"]
    assert "env:TORCH_NCCL_AVOID_RECORD_STREAMS" in table
    merged = out.split("merged configuration:\n", 1)[1]
    values = yaml.safe_load(merged)  # the resolved config is valid YAML (sources are comments)
    assert values["world_size"] == 2 and values["max_seq_len"] == 8192
    assert "world_size: 2" in merged and "# registry:world_size_2.yaml" in merged


def test_unknown_name_exits_2_with_close_matches(capsys):
    assert main(["show", "meta-llama/Llama-3.1-8B-Instrct"]) == 2
    err = capsys.readouterr().err
    assert "not in the model registry" in err and f"Did you mean '{LLAMA_8B}'" in err


def test_resolve_without_match_exits_1_or_2_when_strict(capsys, tmp_path):
    transformers.LlamaConfig(hidden_size=64, num_attention_heads=4).save_pretrained(tmp_path / "m")
    assert main(["resolve", str(tmp_path / "m")]) == 1
    assert "no entry matches" in capsys.readouterr().out
    assert main(["resolve", str(tmp_path / "m"), "--strict"]) == 2
    assert "strict_registry=True makes this an error" in capsys.readouterr().err


def test_resolve_config_id_and_table(capsys):
    assert main(["resolve", LLAMA_8B, "--config-id", "single_gpu", "--table"]) == 0
    out = capsys.readouterr().out
    assert "[config_id=single_gpu]" in out
    assert any(
        line.split()[:3] == ["world_size", "1", "registry:world_size_1.yaml"]
        for line in out.splitlines()
    )


def test_registry_dir_and_check(tmp_path, capsys):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.yaml").write_text("max_seq_len: 64\n")
    (tmp_path / "models.yaml").write_text(
        textwrap.dedent(
            """\
            version: 1
            models:
              - {name: org/good, yaml_extra: [a.yaml]}
              - name: org/bad
                yaml_extra: [a.yaml]
                architecture: {model_type: llama, hiden_size: 1}
            """
        )
    )
    assert main(["--registry-dir", str(tmp_path), "list"]) == 0
    assert "2 entries (2 enabled, 0 disabled)" in capsys.readouterr().out
    assert main(["--registry-dir", str(tmp_path), "check"]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and "org/bad: architecture.hiden_size" in out
    assert main(["--registry-dir", str(tmp_path / "nowhere"), "list"]) == 2
    assert "models.yaml does not exist" in capsys.readouterr().err


def test_check_of_the_shipped_registry_passes(capsys):
    assert main(["check"]) == 0
    assert "all compose" in capsys.readouterr().out
