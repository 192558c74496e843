"""Benchmark a running OpenAI-compatible server (ours or any other).

::

    python -m autodeploy.tools.bench_serving --url http://127.0.0.1:8000 [--model M]
        [--num-requests 64] [--concurrency [1,8,32]] [--input-len 128] [--output-len 64]
        [--vocab-size 256] [--seed 0] [--out results.json]

For each concurrency, sends ``num_requests`` streaming ``/v1/completions`` requests, at most
``concurrency`` at a time, each a random prompt of ``input_len`` token ids (drawn below
``vocab_size``, so any model's vocabulary holds them) asking for exactly ``output_len`` tokens
(``ignore_eos``). Reports requests/s, output tokens/s, time to first token and time per output
token (p50 / p90 / p99, ms) as a table, and everything as JSON (stdout, and ``--out``).
``--model`` defaults to the first model of ``/v1/models``.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config import cli_help_text, parse_cli
from ..utils.errors import ConfigError

PROG = "python -m autodeploy.tools.bench_serving"


class BenchServingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Server base URL, e.g. http://127.0.0.1:8000.")
    model: str | None = Field(default=None, description="Model name; default: the first served.")
    num_requests: int = Field(default=64, ge=1, description="Requests per concurrency level.")
    concurrency: list[int] = Field(default=[1, 8, 32], description="Concurrency levels to run.")
    input_len: int = Field(default=128, ge=1, description="Prompt length in tokens.")
    output_len: int = Field(default=64, ge=1, description="Generated tokens per request.")
    vocab_size: int = Field(default=256, ge=4, description="Prompt token ids are below this.")
    seed: int = Field(default=0, description="Seed of the random prompts.")
    timeout_s: float = Field(default=600.0, gt=0, description="Per-request timeout.")
    out: str | None = Field(default=None, description="Also write the JSON results here.")


@dataclass
class RequestResult:
    ttft_s: float
    latency_s: float
    output_tokens: int
    error: str | None = None


async def _one_request(client: Any, url: str, body: dict[str, Any]) -> RequestResult:
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return RequestResult(0.0, 0.0, 0, f"HTTP {response.status_code}: {text[:200]}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return RequestResult(0.0, 0.0, 0, str(event["error"]))
                if event.get("choices") and first is None:
                    first = time.perf_counter()
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    except Exception as exc:  # noqa: BLE001  (a failed request is counted, not fatal)
        return RequestResult(0.0, 0.0, 0, f"{type(exc).__name__}: {exc}")
    end = time.perf_counter()
    return RequestResult((first or end) - start, end - start, tokens)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "mean": statistics.fmean(values)}


async def run_level(
    options: BenchServingOptions, model: str, concurrency: int, prompts: list[list[int]]
) -> dict[str, Any]:
    import httpx

    url = options.url.rstrip("/") + "/v1/completions"
    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=options.timeout_s, limits=limits) as client:

        async def bounded(prompt: list[int]) -> RequestResult:
            body = {
                "model": model,
                "prompt": prompt,
                "max_tokens": options.output_len,
                "temperature": 0.0,
                "ignore_eos": True,
                "stream": True,
            }
            async with limit:
                return await _one_request(client, url, body)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded(p) for p in prompts))
        wall = time.perf_counter() - start
    ok = [r for r in results if r.error is None]
    output_tokens = sum(r.output_tokens for r in ok)
    per_token = [
        (r.latency_s - r.ttft_s) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1
    ]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "wall_s": wall,
        "requests_per_s": len(ok) / wall,
        "output_tokens_per_s": output_tokens / wall,
        "ttft_ms": {k: 1e3 * v for k, v in _percentiles([r.ttft_s for r in ok]).items()},
        "tpot_ms": {k: 1e3 * v for k, v in _percentiles(per_token).items()},
    }


def random_prompts(options: BenchServingOptions) -> list[list[int]]:
    rng = random.Random(options.seed)
    low = min(3, options.vocab_size - 1)  # skip the usual special ids 0..2
    return [
        [rng.randrange(low, options.vocab_size) for _ in range(options.input_len)]
        for _ in range(options.num_requests)
    ]


def first_model(url: str) -> str:
    import httpx

    data = httpx.get(url.rstrip("/") + "/v1/models", timeout=30).json()["data"]
    if not data:
        raise ConfigError(f"{url}/v1/models lists no model; pass --model.")
    return data[0]["id"]


def run(options: BenchServingOptions) -> dict[str, Any]:
    model = options.model or first_model(options.url)
    prompts = random_prompts(options)
    levels = [asyncio.run(run_level(options, model, c, prompts)) for c in options.concurrency]
    return {"model": model, "options": options.model_dump(), "results": levels}


def format_table(report: dict[str, Any]) -> str:
    header = (
        f"{'conc':>5} {'ok':>5} {'req/s':>8} {'tok/s':>9} {'ttft p50':>9} {'p90':>8} {'p99':>8} "
        f"{'tpot p50':>9} {'p90':>8} {'p99':>8}  (ms)"
    )
    lines = [header]
    for level in report["results"]:
        ttft, tpot = level["ttft_ms"], level["tpot_ms"]
        lines.append(
            f"{level['concurrency']:>5} {level['requests'] - level['failed']:>5} "
            f"{level['requests_per_s']:>8.2f} {level['output_tokens_per_s']:>9.1f} "
            f"{ttft['p50']:>9.1f} {ttft['p90']:>8.1f} {ttft['p99']:>8.1f} "
            f"{tpot['p50']:>9.2f} {tpot['p90']:>8.2f} {tpot['p99']:>8.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        parsed = parse_cli(argv, settings=BenchServingOptions)
        if parsed.get("help"):
            print(f"usage: {PROG} [options]\n\n{__doc__}\n")
            print(cli_help_text(settings=BenchServingOptions))
            return 0
        values = dict(parsed["args"])
        if isinstance(values.get("concurrency"), int):
            values["concurrency"] = [values["concurrency"]]
        options = BenchServingOptions(**values)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # pydantic: a missing or out-of-range option
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run(options)
    print(format_table(report))
    text = json.dumps(report, indent=2)
    print(text)
    if options.out:
        Path(options.out).write_text(text + "\n")
    return 0 if all(level["failed"] == 0 for level in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
