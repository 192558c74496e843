"""dump_graph writes one graph per transform, the resolved config and the summary."""

import subprocess
import sys


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "autodeploy.tools.dump_graph", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_dumps_stop_after_and_disable(tmp_path):
    out = tmp_path / "dump"
    result = run(
        "--out", str(out), "--stop-after", "verify_pattern_coverage",
        "--disable", "cleanup_noop_slice", "--args.model-kwargs.num-hidden-layers=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in out.iterdir() if p.name != ".autodeploy-dump-manifest")
    assert files[:3] == ["001_build_model.txt", "002_export_to_gm.txt", "004_cleanup_noop_add.txt"]
    assert files[-3:] == ["017_verify_pattern_coverage.txt", "config.yaml", "summary.txt"]
    assert not any(name.startswith("003_") for name in files)  # disabled: no dump
    assert not any(name.startswith("018_") for name in files)  # stopped after 017
    graph = (out / "002_export_to_gm.txt").read_text()
    assert "def forward(self, input_ids, position_ids)" in graph
    assert graph.count("torch.ops.auto_deploy.torch_attention.default(") == 1  # one layer
    final = (out / "017_verify_pattern_coverage.txt").read_text()
    assert "torch_rope_with_explicit_cos_sin" in final and "torch_rmsnorm" in final
    summary = (out / "summary.txt").read_text()
    for column in ("transform", "stage", "matches", "ms", "skipped"):
        assert column in summary
    assert "cleanup_noop_slice" in summary and "disabled" in summary
    assert "pattern coverage" in summary and "attention: 1/1 layers" in summary
    config = (out / "config.yaml").read_text()
    assert "num_hidden_layers: 1" in config and "# cli" in config


def test_bad_transform_name_is_a_clear_error(tmp_path):
    result = run("--out", str(tmp_path), "--stop-after", "export_to_g")
    assert result.returncode == 2
    assert "'export_to_g' is not in the pipeline. Did you mean 'export_to_gm'" in result.stderr
