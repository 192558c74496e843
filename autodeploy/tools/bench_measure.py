"""How the benchmark times a system, the same way for every system.

Decode time per step = (time to generate ``osl`` tokens - time to generate 1 token) / (osl - 1):
the prompt's prefill and the per-call overhead cancel out. Both times are the best of
``repeats`` runs (alternating), after a warm-up of one short generation and one single-token
generation (compilation, CUDA-graph capture, lazy allocations and cuBLAS heuristics happen
there, not in the timed runs). Every run must return exactly the asked number of tokens per
row. For ``ours``, the engine's own counters give how much of a decode step is host work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..utils.errors import AutoDeployError
from .bench_systems import BenchSystem

_clock = time.perf_counter  # a module attribute, so tests can run the timing on a fake clock


class BenchError(AutoDeployError):
    """A system did not do what the benchmark asked (e.g. stopped early)."""


@dataclass
class Measurement:
    ms_per_step: float
    t_osl_s: float  # best time to generate osl tokens
    t_1_s: float  # best time to generate 1 token
    warmup_s: float
    first_row_tokens: list[int]  # greedy tokens of row 0 (for the cross-system sanity line)
    host_ms_per_step: float | None = None  # ours: engine host work per decode step
    engine_forward_ms_per_step: float | None = None  # ours: model + gather + sample


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(
    system: BenchSystem, prompts: torch.Tensor, num_tokens: int, device: torch.device
) -> tuple[float, list[list[int]]]:
    _sync(device)
    start = _clock()
    rows = system.generate(prompts, num_tokens)
    _sync(device)
    elapsed = _clock() - start
    lengths = sorted({len(row) for row in rows})
    if len(rows) != prompts.shape[0] or lengths != [num_tokens]:
        raise BenchError(
            f"{system.spec.name}: asked for {num_tokens} new tokens for each of "
            f"{prompts.shape[0]} prompts, got {len(rows)} rows with lengths {lengths}. "
            "Generation must ignore end-of-sequence tokens."
        )
    return elapsed, rows


def measure(
    system: BenchSystem,
    prompts: torch.Tensor,
    osl: int,
    repeats: int,
    warmup_tokens: int,
    device: torch.device,
) -> Measurement:
    """Time ``system`` on ``prompts`` [B, isl] (see the module docstring)."""
    if osl < 2:
        raise BenchError(f"osl={osl}: the decode time needs at least 2 generated tokens.")
    warm_start = _clock()
    _timed(system, prompts, max(2, min(warmup_tokens, osl)), device)
    _timed(system, prompts, 1, device)
    warmup_s = _clock() - warm_start
    system.reset_graph_stats()
    stats_of = getattr(system, "engine_stats", None)
    best_full = best_one = float("inf")
    host = {osl: 0.0, 1: 0.0}
    forward = {osl: 0.0, 1: 0.0}
    tokens: list[int] = []
    for _ in range(repeats):
        for num_tokens in (osl, 1):
            before = stats_of() if stats_of else None
            host_before = (before.host_s, before.forward_s) if before else (0.0, 0.0)
            elapsed, rows = _timed(system, prompts, num_tokens, device)
            if before is not None:
                after = stats_of()
                host[num_tokens] += after.host_s - host_before[0]
                forward[num_tokens] += after.forward_s - host_before[1]
            if num_tokens == osl:
                best_full = min(best_full, elapsed)
                tokens = rows[0]
            else:
                best_one = min(best_one, elapsed)
    per_step = 1000.0 / (osl - 1)
    result = Measurement(
        ms_per_step=(best_full - best_one) * per_step,
        t_osl_s=best_full,
        t_1_s=best_one,
        warmup_s=warmup_s,
        first_row_tokens=tokens,
    )
    if stats_of is not None:
        result.host_ms_per_step = (host[osl] - host[1]) / repeats * per_step
        result.engine_forward_ms_per_step = (forward[osl] - forward[1]) / repeats * per_step
    return result


def leading_equal(first: list[int], second: list[int]) -> int:
    """How many leading tokens two generations share."""
    count = 0
    for a, b in zip(first, second):
        if a != b:
            break
        count += 1
    return count
