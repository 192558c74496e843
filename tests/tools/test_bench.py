"""The benchmark: CPU smoke run (subprocess, JSON), same weights as Hugging Face, the timing
formula on a virtual clock, option errors, a failing system; GPU smoke run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autodeploy.tools import bench, bench_measure
from autodeploy.tools.bench_measure import BenchError, leading_equal, measure
from autodeploy.tools.bench_presets import (
    load_preset,
    preset_names,
    weight_bytes_per_step,
    write_model_dir,
)
from autodeploy.tools.bench_systems import (
    BenchSystem,
    HfSystem,
    RunShape,
    SystemSpec,
    parse_systems,
)

REPO = Path(__file__).resolve().parents[2]
RECORD_FIELDS = {
    "model", "system", "batch", "isl", "osl", "dtype", "device", "ms_per_step", "decode_tok_s",
    "roofline_ms", "pct_roofline", "weight_bytes", "build_s", "warmup_s", "peak_mem_gib",
    "t_osl_s", "t_1_s", "repeats", "cuda_graph", "host_ms_per_step",
    "engine_forward_ms_per_step", "greedy_match", "versions", "gpu",
}  # fmt: skip


def run_bench(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "autodeploy.tools.bench", *argv],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )  # fmt: skip


def check_record(record: dict, system: str, batch: int, isl: int, osl: int) -> None:
    assert RECORD_FIELDS <= set(record), RECORD_FIELDS - set(record)
    assert (record["system"], record["batch"], record["isl"], record["osl"]) == (
        system, batch, isl, osl
    )  # fmt: skip
    assert set(record["versions"]) == {"torch", "triton", "transformers", "flashinfer"}
    assert record["versions"]["torch"] == torch.__version__ and record["gpu"]
    # the derived fields follow from the measured ones
    ms = (record["t_osl_s"] - record["t_1_s"]) * 1e3 / (osl - 1)
    assert math.isclose(record["ms_per_step"], ms, rel_tol=1e-3, abs_tol=1e-3)
    if record["ms_per_step"] > 0:
        assert math.isclose(
            record["decode_tok_s"], batch / record["ms_per_step"] * 1e3, rel_tol=1e-2
        )
        assert math.isclose(
            record["pct_roofline"], record["roofline_ms"] / record["ms_per_step"] * 100,
            rel_tol=1e-2, abs_tol=0.1,
        )  # fmt: skip
    assert math.isclose(record["roofline_ms"], record["weight_bytes"] / 3.35e9, rel_tol=1e-3)
    assert record["build_s"] > 0 and record["repeats"] >= 1


def test_cpu_smoke_run_writes_json_with_every_field(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_bench(
        "--preset", "tiny", "--device", "cpu", "--systems", "hf-eager,ours:torch+torch-simple",
        "--isl", "8", "--osl", "4", "--batch-sizes", "1,2", "--repeats", "1", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    records = json.loads(out.read_text())
    expected = [(s, b) for s in ("hf-eager", "ours:torch+torch-simple") for b in (1, 2)]
    assert [(r["system"], r["batch"]) for r in records] == expected
    for record in records:
        check_record(record, record["system"], record["batch"], 8, 4)
        assert record["model"] == "tiny" and record["peak_mem_gib"] is None
    ours = records[2:]
    assert all(r["greedy_match"].keys() == {"hf-eager"} for r in ours)
    assert all(isinstance(r["host_ms_per_step"], float) for r in ours)
    assert all("fuse_gemms" in r["transforms"] and r["build_problems"] == [] for r in ours)
    # progress lines with timestamps, then the table
    assert "[bench " in proc.stdout and "tiny / ours:torch+torch-simple / batch 2" in proc.stdout
    assert "ms/step" in proc.stdout and f"wrote 4 records to {out}" in proc.stdout


def test_ours_runs_the_same_weights_as_hugging_face(tmp_path):
    """fp32 on CPU: ours and transformers generate the same greedy tokens (tied embeddings,
    llama3 RoPE), which needs the same random weights in both."""
    out = tmp_path / "same.json"
    argv = [
        "--preset", "tiny-hd64", "--device", "cpu", "--dtype", "float32",
        "--systems", "hf-eager,ours", "--isl", "6", "--osl", "8", "--batch-sizes", "2",
        "--repeats", "1", "--warmup-tokens", "2", "--out", str(out),
    ]  # fmt: skip
    records = bench.run_benchmark(bench.build_parser().parse_args(argv), log=lambda _: None)
    assert [r["system"] for r in records] == ["hf-eager", "ours:sdpa+torch-direct"], records
    assert records[1]["greedy_match"] == {"hf-eager": 8}, records
    assert json.loads(out.read_text()) == json.loads(json.dumps(records))


def test_failing_system_gives_an_error_record_and_the_run_goes_on(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("transforms:\n  fuse_gemmz:\n    stage: post_load_fusion\n")
    out = tmp_path / "bench.json"
    status = bench.main([
        "--preset", "tiny", "--device", "cpu", "--systems", "ours,hf-eager", "--isl", "4",
        "--osl", "3", "--batch-sizes", "1", "--repeats", "1", "--ours-yaml", str(bad_yaml),
        "--out", str(out),
    ])  # fmt: skip
    assert status == 1
    records = json.loads(out.read_text())
    assert [r["system"] for r in records] == ["ours:sdpa+torch-direct", "hf-eager"]
    assert "fuse_gemmz" in records[0]["error"] and "fuse_gemms" in records[0]["error"]
    check_record(records[1], "hf-eager", 1, 4, 3)
    assert "FAILED tiny / ours:sdpa+torch-direct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "llama3.2-1"], "Did you mean 'llama3.2-1b'"),
        (["--systems", "ours:trition+torch-simple"], "Did you mean 'triton'"),
        (["--systems", "ours:torch+torch-cudagraf"], "Did you mean 'torch-cudagraph'"),
        (["--systems", "hf-eagr"], "Did you mean 'hf-eager'"),
        (["--systems", "hf-static-compile"], "needs CUDA"),
        (["--systems", "ours,ours:sdpa+torch-direct"], "listed twice"),
        (["--osl", "1"], "--osl >= 2"),
        (["--batch-sizes", "1,x"], "comma list of integers"),
        (["--batch-sizes", "0"], "every value >= 1"),
        (["--ours-yaml", "missing.yaml"], "does not exist"),
    ],
)
def test_bad_options_are_config_errors(argv, message, capsys, tmp_path):
    out = tmp_path / "never.json"
    assert bench.main([*argv, "--device", "cpu", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing ran


def test_parse_systems_defaults_per_device():
    assert [s.name for s in parse_systems("ours,hf-eager", "cuda")] == [
        "ours:triton+torch-cudagraph", "hf-eager"
    ]  # fmt: skip
    assert parse_systems("ours", "cpu")[0] == SystemSpec("ours", "sdpa", "torch-direct")
    assert parse_systems(" ours:flashinfer+torch-opt ,", "cuda")[0].name == (
        "ours:flashinfer+torch-opt"
    )


def llama_weight_count(config: dict) -> int:
    """Parameters read per decode step, counted from the Llama formula (independent of HF)."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads, head_dim = (
        config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    )  # fmt: skip
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v
    layer = attention + 3 * hidden * inter + 2 * hidden  # + gate/up/down + two norms
    head = config["vocab_size"] * hidden  # read every step, tied or not
    return config["num_hidden_layers"] * layer + hidden + head


@pytest.mark.parametrize("name", ["llama3.2-1b", "llama3.1-8b", "tiny-hd64", "tiny"])
def test_weight_bytes_match_the_llama_formula(name):
    config = load_preset(name).config
    expected = llama_weight_count(config)
    assert weight_bytes_per_step(config, torch.bfloat16) == 2 * expected
    assert weight_bytes_per_step(config, torch.float32) == 4 * expected


def test_presets_have_the_documented_shapes():
    assert {"tiny", "tiny-hd64", "tiny-hd128", "llama3.2-1b", "llama3.1-8b"} <= set(preset_names())
    one_b, eight_b = load_preset("llama3.2-1b").config, load_preset("llama3.1-8b").config
    assert (one_b["vocab_size"], one_b["hidden_size"], one_b["num_hidden_layers"]) == (
        128256, 2048, 16
    )  # fmt: skip
    assert one_b["tie_word_embeddings"] and not eight_b["tie_word_embeddings"]
    assert (eight_b["hidden_size"], eight_b["intermediate_size"], eight_b["head_dim"]) == (
        4096, 14336, 128
    )  # fmt: skip


class ClockedSystem(BenchSystem):
    """Generates on a virtual clock: prefill + per-token time, plus a slowdown on some calls."""

    def __init__(self, clock: list[float], step_s: float, short_by: int = 0):
        super().__init__(SystemSpec("hf-eager"), None)  # type: ignore[arg-type]
        self.clock, self.step_s, self.short_by, self.calls = clock, step_s, short_by, 0

    def build(self) -> None:
        pass

    def generate(self, prompts, num_tokens):
        self.calls += 1
        noise = 0.5 if self.calls % 3 == 0 else 0.0  # every third call is slow: best-of drops it
        self.clock[0] += 0.2 + num_tokens * self.step_s + noise
        return [[7] * (num_tokens - self.short_by) for _ in range(prompts.shape[0])]


def test_decode_time_is_best_of_full_minus_one_token(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench_measure, "_clock", lambda: clock[0])
    system = ClockedSystem(clock, step_s=0.004)
    result = measure(system, torch.zeros(2, 5, dtype=torch.long), 33, 3, 8, torch.device("cpu"))
    assert math.isclose(result.ms_per_step, 4.0, rel_tol=1e-9)
    assert math.isclose(result.t_osl_s, 0.2 + 33 * 0.004) and result.first_row_tokens == [7] * 33
    assert result.host_ms_per_step is None  # no engine counters on this system
    assert system.calls == 2 + 2 * 3  # warm-up pair, then three timed pairs


def test_a_system_that_stops_early_is_an_error():
    system = ClockedSystem([0.0], step_s=0.0, short_by=1)
    with pytest.raises(
        BenchError, match=r"asked for 2 new tokens .* got 1 rows with lengths \[1\]"
    ):
        measure(system, torch.zeros(1, 3, dtype=torch.long), 4, 1, 2, torch.device("cpu"))
    assert leading_equal([1, 2, 3], [1, 2, 4]) == 2 and leading_equal([], [1]) == 0


@pytest.mark.gpu
def test_gpu_smoke_run_of_every_default_system(tmp_path):
    """The default GPU systems on a tiny model: CUDA graphs replayed with prefill as the only
    fallback, transformers compiled the decode step, peak memory recorded."""
    out = tmp_path / "gpu.json"
    proc = run_bench(
        "--preset", "tiny-hd64", "--isl", "16", "--osl", "8", "--batch-sizes", "1,2",
        "--repeats", "2", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = {(r["system"], r["batch"]): r for r in json.loads(out.read_text())}
    assert set(records) == {
        (s, b) for s in ("hf-eager", "hf-static-compile", "ours:triton+torch-cudagraph")
        for b in (1, 2)
    }  # fmt: skip
    for (system, batch), record in records.items():
        check_record(record, system, batch, 16, 8)
        assert record["peak_mem_gib"] > 0 and record["ms_per_step"] > 0
    for batch in (1, 2):
        ours = records[("ours:triton+torch-cudagraph", batch)]
        graphs = ours["cuda_graph"]
        assert graphs["captured_batch_sizes"] == [1, 2]
        # per timed generation pair: osl - 1 decode steps replayed, two prefills uncaptured
        assert graphs["replays_by_batch_size"] == {str(batch): 2 * 7}
        assert graphs["fallbacks_by_reason"] == {"prefill": 2 * 2}
        assert ours["build_problems"] == []
        assert records[("hf-static-compile", batch)]["hf_compiled"] is True


def test_hf_static_cache_system_reuses_its_cache_and_matches_eager(tmp_path):
    """The static-cache plumbing on CPU (transformers compiles only on CUDA): a reset cache
    reused across calls gives the same greedy tokens as the dynamic-cache system."""
    shape = RunShape(
        model_dir=write_model_dir(load_preset("tiny"), tmp_path), dtype=torch.float32,
        device=torch.device("cpu"), isl=5, osl=6, batch_sizes=[2],
    )  # fmt: skip
    prompts = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(0))
    outputs = {}
    for kind in ("hf-eager", "hf-static-compile"):
        system = HfSystem(SystemSpec(kind), shape)
        system.build()
        system.prepare(2)
        outputs[kind] = [system.generate(prompts, 6) for _ in range(2)]
        if kind == "hf-static-compile":
            assert system.build_info() == {"hf_compiled": False}  # CPU: not compiled
            assert system.cache.get_seq_length() == 5 + 6 - 1  # the cache was used
        system.close()
    eager, static = outputs["hf-eager"], outputs["hf-static-compile"]
    assert eager[0] == eager[1] == static[0] == static[1]
    assert all(len(row) == 6 for row in static[1])
