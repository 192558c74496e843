"""explain_sharding prints the plan per layer; dump_graph's summary.txt holds the same table."""

from __future__ import annotations

import pytest
from tiny_models import save_tiny

from autodeploy.tools import dump_graph, explain_sharding


@pytest.fixture(scope="module")
def phi3(tmp_path_factory):
    path = tmp_path_factory.mktemp("phi3")
    save_tiny(path, "phi3")
    return path


def test_explain_prints_every_split_layer(phi3, capsys):
    assert explain_sharding.main(["--model", str(phi3), "--world-size", "2", "--rank", "1"]) == 0
    text = capsys.readouterr().out
    assert "sharding plan: rank 1 of 2, 9 split layers" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    qkv = lines["model.layers.0.self_attn.qkv_proj"]
    assert qkv[1:5] == ["colwise", "heuristic", "64x64", "-"]
    assert qkv[5] == f"{64 * 64 * 4:,}"  # fp32 bytes of this rank's qkv rows
    assert lines["model.layers.1.mlp.down_proj"][1:5] == [
        "rowwise",
        "heuristic",
        "64x64",
        "all_reduce",
    ]
    assert lines["lm_head"][4] == "all_gather(dim=-1)"
    assert (
        "factory plan 'layers.*.self_attn.qkv_proj': 'colwise_gather_output' is not applied" in text
    )


def test_explain_rejects_a_rank_outside_the_world(phi3, capsys):
    assert explain_sharding.main(["--model", str(phi3), "--world-size", "2", "--rank", "2"]) == 2
    assert "--rank 2 is outside world_size=2" in capsys.readouterr().err


def test_dump_graph_summary_has_the_plan(phi3, tmp_path):
    out = tmp_path / "dump"
    argv = ["--model", str(phi3), "--out", str(out), "--world-size", "2",
            "--stop-after", "sharding_transform_executor"]  # fmt: skip
    assert dump_graph.main(argv) == 0
    summary = (out / "summary.txt").read_text()
    assert "sharding plan: rank 0 of 2, 9 split layers" in summary
    assert "model.layers.0.mlp.gate_up_proj" in summary
