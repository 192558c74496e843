"""Decode speed of autodeploy against Hugging Face baselines, in one process on one device.

::

    python -m autodeploy.tools.bench                      # GPU: 1B + 8B shapes, 3 systems
    python -m autodeploy.tools.bench --preset llama3.2-1b --batch-sizes 1 --out bench.json
    python -m autodeploy.tools.bench --systems ours:flashinfer+torch-cudagraph,hf-eager
    python -m autodeploy.tools.bench --preset tiny --device cpu --isl 8 --osl 4   # smoke run

Options: ``--preset`` (comma list of ``autodeploy/models/presets/*.yaml``; default
``llama3.2-1b,llama3.1-8b`` on CUDA, ``tiny`` on CPU), ``--systems`` (``hf-eager``,
``hf-static-compile``, ``ours`` or ``ours:<attn>+<compile>``; default on CUDA ``hf-eager,
hf-static-compile,ours:triton+torch-cudagraph``, on CPU ``hf-eager,ours`` (sdpa+torch-direct);
FlashInfer only when named, its kernels are compiled on first use), ``--isl``/``--osl``
(128/128), ``--batch-sizes`` (1,16), ``--repeats`` (best of, >= 3 by default), ``--dtype``
(bfloat16), ``--device``, ``--out FILE`` (JSON list of records, rewritten after every record),
``--warmup-tokens``, ``--ours-yaml FILE ...`` (``yaml_extra`` for ours),
``--fail-fast``, ``--verbose`` (autodeploy's INFO logs).

Systems run one after another; each is freed (model, caches, compiled graphs) before the next.
All run the same random weights (the model factory's seed) on the same random prompts
(``--seed``). How time per step is measured: ``bench_measure.py``; the systems:
``bench_systems.py``. Host work per step without a model: ``autodeploy.tools.host_overhead``.

Record fields: model, system, batch, isl, osl, dtype, device, ms_per_step, decode_tok_s
(batch / s per step), roofline_ms (weight bytes per step / ``--hbm-tb-s``, 3.35 TB/s = H100
SXM), pct_roofline, weight_bytes, build_s (ours: LLM construction with weight init and
capture; hf-eager: model creation; hf-static-compile: creation + warm-up incl. compilation),
warmup_s, peak_mem_gib (max allocated while the system ran; null on CPU), t_osl_s, t_1_s,
repeats, cuda_graph (ours: captured sizes, replays, fallbacks in the timed runs),
host_ms_per_step / engine_forward_ms_per_step (ours: engine split of a decode step),
greedy_match (leading equal tokens of row 0 against each system that ran before on the same
model and batch), versions {torch, triton, transformers, flashinfer}, gpu, and per
system extras (ours: build_problems, transforms; hf-static-compile: hf_compiled). A system
that fails gives one record with ``error`` and the run goes on (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ..utils.errors import ConfigError
from .bench_measure import leading_equal, measure
from .bench_options import build_parser, resolve
from .bench_presets import weight_bytes_per_step, write_model_dir
from .bench_report import environment_info, format_table, one_line
from .bench_systems import RunShape, SystemSpec, make_system


def _sig(value: float | None, digits: int = 5) -> float | None:
    """``value`` to ``digits`` significant digits (times span 1e-5 ms on CPU to seconds)."""
    return None if value is None else float(f"{value:.{digits}g}")


def speed_fields(ms: float, batch: int, weight_bytes: int, roofline_ms: float) -> dict[str, Any]:
    positive = ms > 0  # a tiny CPU run can measure noise
    return {
        "ms_per_step": _sig(ms),
        "decode_tok_s": _sig(batch / ms * 1e3) if positive else None,
        "roofline_ms": _sig(roofline_ms),
        "pct_roofline": _sig(roofline_ms / ms * 100, 4) if positive else None,
        "weight_bytes": weight_bytes,
    }


class Progress:
    """Timestamped progress lines on stdout, flushed at once (a killed run keeps them)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[bench {time.perf_counter() - self.start:7.1f}s] {message}", flush=True)


def write_records(path: str | None, records: list[dict[str, Any]]) -> None:
    """Rewrite the JSON file with every record so far (atomically: a kill leaves valid JSON)."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(tmp, target)


def _free_device(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def run_system(
    spec: SystemSpec, shape: RunShape, ns: argparse.Namespace, context: dict[str, Any]
) -> list[dict[str, Any]]:
    """Build one system, measure every batch size, free it. Returns its records; each record
    is also passed to ``context["emit"]`` as soon as it is measured."""
    log = context["log"]
    preset = context["preset"]
    device = shape.device
    _free_device(device)
    system = make_system(
        spec,
        shape,
        yaml_extra=ns.ours_yaml,
    )
    records = []
    try:
        log(f"{preset.name} / {spec.name}: building")
        start = time.perf_counter()
        system.build()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        build_s = time.perf_counter() - start
        log(f"{preset.name} / {spec.name}: built in {build_s:.1f} s")
        for batch in shape.batch_sizes:
            system.prepare(batch)
            prompts = context["prompts"][:batch].to(device)
            m = measure(system, prompts, shape.osl, ns.repeats, ns.warmup_tokens, device)
            tokens_seen = context["tokens"].setdefault(batch, {})
            record = {
                "model": preset.name,
                "system": spec.name,
                "batch": batch,
                "isl": shape.isl,
                "osl": shape.osl,
                "dtype": ns.dtype,
                "device": str(device),
                **speed_fields(
                    m.ms_per_step, batch, context["weight_bytes"], context["roofline_ms"]
                ),
                "build_s": _sig(
                    build_s + (m.warmup_s if spec.kind == "hf-static-compile" else 0.0), 4
                ),
                "warmup_s": _sig(m.warmup_s, 4),
                "peak_mem_gib": _peak_gib(device),
                "t_osl_s": _sig(m.t_osl_s, 6),
                "t_1_s": _sig(m.t_1_s, 6),
                "repeats": ns.repeats,
                "cuda_graph": system.graph_stats(),
                "host_ms_per_step": _sig(m.host_ms_per_step, 4),
                "engine_forward_ms_per_step": _sig(m.engine_forward_ms_per_step, 4),
                "greedy_match": {
                    other: leading_equal(m.first_row_tokens, seen)
                    for other, seen in tokens_seen.items()
                },
                **context["env"],
                **system.build_info(),
            }
            tokens_seen[spec.name] = m.first_row_tokens
            records.append(record)
            context["emit"](record)
    finally:
        system.close()
        del system
        _free_device(device)
    return records


def run_benchmark(ns: argparse.Namespace, log: Progress | None = None) -> list[dict[str, Any]]:
    """Run every preset x system x batch size; returns the records (also written to --out)."""
    options = resolve(ns)
    log = log or Progress()
    device, dtype = options["device"], options["dtype"]
    env = environment_info(device)
    log(f"device {env['gpu']}; versions {env['versions']}")
    records: list[dict[str, Any]] = []

    def emit(record: dict[str, Any]) -> None:
        records.append(record)
        write_records(ns.out, records)
        log(one_line(record))

    for preset in options["presets"]:
        weight_bytes = weight_bytes_per_step(preset.config, dtype)
        generator = torch.Generator().manual_seed(ns.seed)
        max_batch = max(options["batch_sizes"])
        prompts = torch.randint(0, preset.vocab_size, (max_batch, ns.isl), generator=generator)
        context = {
            "log": log,
            "preset": preset,
            "prompts": prompts,
            "weight_bytes": weight_bytes,
            "roofline_ms": weight_bytes / (ns.hbm_tb_s * 1e12) * 1e3,
            "env": env,
            "emit": emit,
            "tokens": {},
        }
        with tempfile.TemporaryDirectory(prefix=f"autodeploy-bench-{preset.name}-") as tmp:
            shape = RunShape(
                model_dir=write_model_dir(preset, tmp),
                dtype=dtype,
                device=device,
                isl=ns.isl,
                osl=ns.osl,
                batch_sizes=options["batch_sizes"],
            )
            for spec in options["systems"]:
                try:
                    run_system(spec, shape, ns, context)
                except Exception as exc:
                    if ns.fail_fast:
                        raise
                    traceback.print_exc()
                    message = f"{type(exc).__name__}: {exc}"
                    emit({"model": preset.name, "system": spec.name, "error": message, **env})
    return records


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if not ns.verbose:
        os.environ.setdefault("AUTODEPLOY_LOG_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..utils.logger import configure_logging

    configure_logging()
    if not ns.verbose:
        import transformers

        transformers.logging.set_verbosity_error()
    try:
        records = run_benchmark(ns)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(records), flush=True)
    if ns.out:
        print(f"wrote {len(records)} records to {ns.out}", flush=True)
    return 1 if any("error" in record for record in records) else 0


if __name__ == "__main__":
    sys.exit(main())
