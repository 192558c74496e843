"""tools/gpu_check.sh (the prepared H100 check) in its CPU dry mode, and its JSON checker.

The dry run goes through the same steps as the GPU run would (time-boxed step, bench JSON,
summary table) on the tiny preset, so a broken script is found here and not on the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
SUMMARY = ROOT / "tools" / "gpu_check_summary.py"


def run_script(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "ten"], "--budget must be a whole number"),
        (["--budget", "30"], "--budget must be a whole number of seconds >= 60"),
        (["--batch-sizes", "1;16"], "--batch-sizes must be a comma list"),
        (["--presets", ""], "--presets is empty"),
        (["--turbo"], "unknown option '--turbo'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, args, message):
    result = run_script(*args, out=tmp_path)
    assert result.returncode == 2 and message in result.stderr


def test_dry_run_writes_checked_records_and_a_table(tmp_path):
    result = run_script("--dry-run", out=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    records = json.loads((tmp_path / "bench-dry.json").read_text())
    systems = {record["system"] for record in records}
    assert {"hf-eager", "ours:sdpa+torch-direct"} <= systems
    # (a 4-token CPU run can time noise, so ms_per_step is only checked to be a number)
    assert all("error" not in r and isinstance(r["ms_per_step"], float) for r in records)
    table = (tmp_path / "table.txt").read_text()
    assert "ours:sdpa+torch-direct" in table and "ms/step" in table
    assert "END bench-dry rc=0" in (tmp_path / "steps.log").read_text()


def run_summary(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SUMMARY), str(out)], capture_output=True, text=True, timeout=60
    )


def test_summary_rejects_records_without_speed_fields(tmp_path):
    record = {"model": "m", "system": "ours", "batch": 1, "isl": 8, "osl": 4}
    (tmp_path / "bench-x.json").write_text(json.dumps([{**record, "dtype": "f", "device": "c"}]))
    result = run_summary(tmp_path)
    assert result.returncode == 1 and "missing ms_per_step" in result.stderr


def test_summary_shows_errors_and_ratios_against_the_static_compile_baseline(tmp_path):
    base = {"model": "m", "batch": 1, "isl": 8, "osl": 4, "dtype": "bf16", "device": "cuda"}
    speed = {"decode_tok_s": 1.0, "roofline_ms": 0.5, "pct_roofline": 50.0}
    records = [
        {**base, "system": "hf-static-compile", "ms_per_step": 2.0, **speed},
        {**base, "system": "ours:triton+torch-cudagraph", "ms_per_step": 1.0, **speed},
        {**base, "system": "ours:flashinfer+torch-cudagraph", "error": "JIT failed"},
    ]
    (tmp_path / "bench-m.json").write_text(json.dumps(records))
    result = run_summary(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2.00x faster" in result.stdout and "ERROR: JIT failed" in result.stdout
    (tmp_path / "bench-m.json").write_text("[]")
    assert run_summary(tmp_path).returncode == 1  # no records at all is a failed check
