"""build_and_run: the default run, an override run with a benchmark, bad options, dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autodeploy.tools import build_and_run

REPO = Path(__file__).resolve().parents[2]


def run_cli(*argv: str, timeout: int = 300, log_level: str = "INFO") -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTODEPLOY_LOG_LEVEL": log_level, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "autodeploy.tools.build_and_run", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_default_run_prints_prompts_and_completions():
    proc = run_cli("--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for index in (0, 1):
        assert f"[{index}] prompt: 'How big" in proc.stdout or f"[{index}] prompt:" in proc.stdout
        assert f"[{index}] output: " in proc.stdout
    assert "(32 generated tokens" in proc.stdout or "generated tokens, stop)" in proc.stdout
    # progress lines with timings: build, then generation
    assert "model built in" in proc.stderr and "generated" in proc.stderr and "tok/s" in proc.stderr


def test_override_run_with_benchmark_writes_json(tmp_path):
    results = tmp_path / "bench" / "results.json"
    proc = run_cli(
        "--device=cpu",
        "--args.model-kwargs.num-hidden-layers=1",
        "--args.kv-cache-config.tokens-per-block=8",
        "--args.transforms.compile-model.backend=torch-simple",
        "--prompt.batch-size",
        "3",
        "--prompt.queries",
        "One",
        "Two",
        "--prompt.sp-kwargs.max-tokens=5",
        "--benchmark.enabled=true",
        "--benchmark.isl=24",
        "--benchmark.osl=6",
        "--benchmark.bs=2",
        "--benchmark.num=2",
        f"--benchmark.results-path={results}",
        log_level="DEBUG",  # the factory's config-override line is a per-transform detail
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "num_hidden_layers" in proc.stderr  # the model-kwargs override reached the factory
    assert "[2] prompt: 'One'" in proc.stdout and "(5 generated tokens, length)" in proc.stdout
    data = json.loads(results.read_text())
    assert (data["isl"], data["osl"], data["bs"], data["num"]) == (24, 6, 2, 2)
    assert data["output_tokens"] == 2 * 2 * 6
    assert data["output_tokens_per_s"] > 0 and data["latency_s"]["mean"] > 0
    assert data["time_per_step_ms"] > 0 and "host_time_per_step_ms" in data


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--args.max-batch-sise=4"], "Did you mean '--args.max-batch-size'"),
        (["--max-seq-lenn", "8"], "Did you mean '--max-seq-len'"),
        (["--prompt.batchsize=4"], "Did you mean '--prompt.batch-size'"),
        (["--benchmark.enable=true"], "Did you mean '--benchmark.enabled'"),
        (["--prompt.sp-kwargs.max-tokenz=4"], "Did you mean '--prompt.sp-kwargs.max-tokens'"),
        (["--prompt.sp-kwargs.top-p=3"], "top_p=3.0"),
        (["--args.transforms.export-to-gm.stric=true"], "strict"),
    ],
)
def test_bad_options_suggest_and_exit_non_zero(argv, fragment, capsys):
    assert build_and_run.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err, err


def test_misspelled_key_in_a_subprocess_exits_2():
    proc = run_cli("--args.max-batch-sise=4", timeout=120)
    assert proc.returncode == 2
    assert "Did you mean '--args.max-batch-size'" in proc.stderr


def test_dry_run_prints_the_resolved_config_with_sources(capsys):
    assert build_and_run.main(["--dry-run", "--args.max-seq-len=128", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "max_seq_len: 128" in out and "# cli" in out
    assert "insert_cached_attention" in out and "\nprompt:\n  batch_size: 2" in out
    assert "results_path: benchmark_results.json  # default" in out


def test_benchmark_raises_max_seq_len_unless_set_explicitly(capsys):
    args, _, bench, _ = build_and_run.resolve(
        ["--benchmark.enabled=true", "--benchmark.isl=3000", "--benchmark.osl=100"]
    )
    assert args.max_seq_len == 3100 and bench.isl == 3000
    args, _, _, _ = build_and_run.resolve(
        ["--benchmark.enabled=true", "--benchmark.isl=10", "--benchmark.osl=6", "--max-seq-len=64"]
    )
    assert args.max_seq_len == 64
    assert (
        build_and_run.main(["--benchmark.enabled=true", "--benchmark.isl=100", "--max-seq-len=64"])
        == 2
    )
    assert "needs isl + osl = 228 tokens" in capsys.readouterr().err


def test_experiment_file_with_token_id_queries_runs(tmp_path, capsys):
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        "args:\n"
        "  device: cpu\n"
        "  model_kwargs: {num_hidden_layers: 1}\n"
        "  transforms: {compile_model: {backend: torch-simple}}\n"
        "prompt:\n"
        "  batch_size: 1\n"
        "  queries: [[1, 2, 3, 4]]\n"
        "  sp_kwargs: {max_tokens: 3}\n"
    )
    assert build_and_run.main(["--yaml-extra", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert "[0] prompt: [1, 2, 3, 4]" in out and "(3 generated tokens, length)" in out
