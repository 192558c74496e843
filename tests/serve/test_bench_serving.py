"""bench_serving against the test server: every level runs, numbers are consistent, JSON out."""

from __future__ import annotations

import json

from autodeploy.tools import bench_serving


def test_bench_serving_reports_every_level(served, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "--url",
        served.url,
        "--num-requests",
        "6",
        "--concurrency",
        "[1,3]",
        "--input-len",
        "8",
        "--output-len",
        "4",
        "--out",
        str(out),
    ]
    assert bench_serving.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "tiny" and [r["concurrency"] for r in report["results"]] == [1, 3]
    for level in report["results"]:
        assert level["requests"] == 6 and level["failed"] == 0
        # exactly 4 tokens per request: tokens/s and requests/s agree
        assert abs(level["output_tokens_per_s"] - 4 * level["requests_per_s"]) < 1e-6
        assert 0 < level["ttft_ms"]["p50"] <= level["ttft_ms"]["p99"]
        assert 0 < level["tpot_ms"]["p50"] <= level["tpot_ms"]["p99"]
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["conc", "ok", "req/s"] and table[1].split()[:2] == ["1", "6"]


def test_bench_serving_option_errors(capsys):
    assert bench_serving.main(["--url", "http://x", "--num-request", "3"]) == 2
    assert "num_requests" in capsys.readouterr().err.replace("-", "_")
    assert bench_serving.main(["--num-requests", "3"]) == 2  # --url is required
    assert "url" in capsys.readouterr().err
