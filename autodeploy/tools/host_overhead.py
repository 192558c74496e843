"""Host work per decode step, without a model: what the runtime costs around the forward.

    python -m autodeploy.tools.host_overhead [--batch-sizes 1 8 64] [--steps 100] [--repeats 10]
        [--prompt-len 128] [--page-size 32] [--vocab 256] [--device cpu]

For every batch size it prints microseconds per decode step of

- ``nest_sequences``: ``SequenceInfo.nest_sequences`` alone, on the decode batch the engine would
  pass (one new token per sequence, ``prompt-len`` tokens already cached; every metadata arg
  activated);
- ``engine step``: ``Engine.step()`` at steady-state decode (greedy, EOS ignored) on a real
  ``CachedSequenceInterface`` with a model that returns precomputed logits instantly; this is
  scheduling + pages + ``nest_sequences`` + the copy + ``gather_last_logits`` + argmax + the
  tokens' device-to-host copy + bookkeeping, i.e. all host work of a step, no model;
- ``host`` / ``sample``: the engine's own split of that step (``EngineStats``: ``host`` =
  scheduling, packing and bookkeeping; ``sample`` = the instant model, logit gather and sampling).

Each number is the best of ``repeats`` rounds of ``steps`` steps (the mean per step within a
round; the best, because other processes on the machine only ever add time). With
``--device cuda`` the metadata copy and the argmax really go to the GPU (the argmax then
includes a device synchronisation). The GPU benchmark with real models is
``autodeploy.tools.bench``; this tool isolates the host side, with no other dependency.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from ..runtime.engine import Engine
from ..runtime.sampling import SamplingParams
from ..shim import ARG_NAMES, CachedSequenceInterface
from ..utils.devices import check_device_available
from ..utils.exit_codes import EXIT_OK, tool_main

_WARMUP_STEPS = 20


class InstantModel:
    """Returns zero logits of the right shape ([b, s, vocab], made once per shape)."""

    def __init__(self, vocab: int, device: torch.device):
        self.vocab = vocab
        self.device = device
        self._by_shape: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, input_ids: torch.Tensor, **_: Any) -> torch.Tensor:
        shape = tuple(input_ids.shape)
        logits = self._by_shape.get(shape)
        if logits is None:
            logits = torch.zeros(*shape, self.vocab, device=self.device)
            self._by_shape[shape] = logits
        return logits


def make_interface(
    batch_size: int, max_seq_len: int, page_size: int, device: str
) -> CachedSequenceInterface:
    """A sequence interface with every metadata arg active and a pool that fits the batch."""
    cm = CachedSequenceInterface(
        max_seq_len=max_seq_len,
        max_batch_size=batch_size,
        max_num_tokens=max(max_seq_len, batch_size),
        device=device,
        kv_cache_config={"tokens_per_block": page_size},
    )
    cm.info.set_num_pages(batch_size * -(-max_seq_len // page_size) + 1)
    for name in ARG_NAMES:
        cm.info.activate_arg("batch_info_host" if name == "batch_info" else name)
    return cm


def _best_per_step(run_round, steps: int, repeats: int) -> float:
    """Best (over ``repeats``) mean seconds per step of ``run_round(steps)``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run_round(steps)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def time_nest_sequences(args: argparse.Namespace, batch_size: int) -> float:
    """Seconds per ``nest_sequences`` call on a decode batch of ``batch_size`` sequences."""
    cm = make_interface(batch_size, args.prompt_len + 8, args.page_size, args.device)
    pages_per_seq = -(-(args.prompt_len + 1) // args.page_size)
    input_ids = [[i + 1] for i in range(batch_size)]
    input_pos = [args.prompt_len] * batch_size
    cache_loc = [
        list(range(1 + i * pages_per_seq, 1 + (i + 1) * pages_per_seq)) for i in range(batch_size)
    ]
    slot_idx = list(range(batch_size))

    def run_round(steps: int) -> None:
        for _ in range(steps):
            cm.info.nest_sequences(input_ids, input_pos, cache_loc, slot_idx)

    run_round(_WARMUP_STEPS)
    return _best_per_step(run_round, args.steps, args.repeats)


def decoding_engine(args: argparse.Namespace, batch_size: int) -> Engine:
    """An engine whose ``batch_size`` greedy requests have all finished their prefill."""
    # Early requests decode while later ones still prefill: leave room for those steps.
    max_new = _WARMUP_STEPS + args.steps + 64
    max_seq_len = args.prompt_len + max_new
    cm = make_interface(batch_size, max_seq_len, args.page_size, args.device)
    engine = Engine(
        InstantModel(args.vocab, cm.device),
        cm,
        num_pages=cm.info.num_pages,
        page_size=args.page_size,
        max_batch_size=batch_size,
        max_num_tokens=max(max_seq_len, batch_size),
        max_seq_len=max_seq_len,
        device=cm.device,
        progress_interval_s=float("inf"),
    )
    params = SamplingParams(max_tokens=max_new, temperature=0.0, ignore_eos=True)
    for i in range(batch_size):
        engine.add_request([(i + t) % args.vocab for t in range(args.prompt_len)], params)
    while engine.num_waiting or any(r.is_prefilling for r in engine.scheduler.running):
        engine.step()
    return engine


def time_engine_step(args: argparse.Namespace, batch_size: int) -> tuple[float, float, float]:
    """Seconds per decode ``Engine.step()``: total, the engine's host part, its sample part.

    Every round starts from fresh requests, so the context stays within ``prompt_len`` plus
    ``steps`` (+ warm-up) tokens, as in the ``nest_sequences`` measurement."""
    best = (float("inf"), 0.0, 0.0)
    for _ in range(args.repeats):
        engine = decoding_engine(args, batch_size)
        for _ in range(_WARMUP_STEPS):
            engine.step()
        stats = engine.stats
        host_s, forward_s = stats.host_s, stats.forward_s
        start = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        total = (time.perf_counter() - start) / args.steps
        if engine.num_running != batch_size:
            raise RuntimeError("a request finished during the measurement; raise max_tokens")
        if total < best[0]:
            host = (stats.host_s - host_s) / args.steps
            best = (total, host, (stats.forward_s - forward_s) / args.steps)
    return best


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=10, help="rounds; the best is reported")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--page-size", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=256, help="logit width (argmax cost)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def measure(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Parse ``argv``, print the table and return its rows."""
    args = parse_args(argv)
    check_device_available(args.device, "--device")
    rows = []
    print(f"host work per decode step (us), device={args.device}, prompt={args.prompt_len}, "
          f"page_size={args.page_size}, best of {args.repeats} x {args.steps} steps")  # fmt: skip
    print(f"{'batch':>6} {'nest_sequences':>15} {'engine step':>12} {'host':>8} {'sample':>8}")
    for batch_size in args.batch_sizes:
        nest = time_nest_sequences(args, batch_size)
        total, host, sample = time_engine_step(args, batch_size)
        row = {"batch": batch_size, "nest_us": nest * 1e6, "engine_step_us": total * 1e6,
               "host_us": host * 1e6, "sample_us": sample * 1e6}  # fmt: skip
        rows.append(row)
        print(f"{batch_size:>6} {row['nest_us']:>15.1f} {row['engine_step_us']:>12.1f} "
              f"{row['host_us']:>8.1f} {row['sample_us']:>8.1f}")  # fmt: skip
    return rows


@tool_main
def main(argv: list[str] | None = None) -> int:
    measure(argv)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
