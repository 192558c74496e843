"""Command-line options of the benchmark (``python -m autodeploy.tools.bench --help``) and
their checks; the defaults that depend on the device are filled in by ``resolve``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..utils.errors import ConfigError
from .bench_presets import load_preset, torch_dtype
from .bench_systems import parse_systems

PROG = "python -m autodeploy.tools.bench"
DEFAULTS = {
    "cuda": ("llama3.2-1b,llama3.1-8b", "hf-eager,hf-static-compile,ours:triton+torch-cudagraph"),
    "cpu": ("tiny", "hf-eager,ours"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Decode speed of autodeploy against Hugging Face baselines, in one process "
        "on one device. Record fields and methods: the docstring of autodeploy/tools/bench.py.",
    )
    add = parser.add_argument
    add("--preset", default=None, help="comma list of presets (see the module docstring)")
    add("--systems", default=None, help="comma list: hf-eager, hf-static-compile, ours[:a+c]")
    add("--isl", type=int, default=128, help="prompt tokens per sequence")
    add("--osl", type=int, default=128, help="generated tokens per sequence (>= 2)")
    add("--batch-sizes", default="1,16", help="comma list of batch sizes")
    add("--repeats", type=int, default=3, help="timed runs per measurement (best of)")
    add("--warmup-tokens", type=int, default=16, help="tokens of the warm-up generation")
    add("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add("--out", default=None, help="write the records as a JSON list to this file")
    add("--seed", type=int, default=0, help="seed of the random prompts")
    add("--hbm-tb-s", type=float, default=3.35, help="memory bandwidth for roofline_ms (TB/s)")
    add("--ours-yaml", nargs="+", default=[], help="yaml_extra files for the ours systems")
    add("--fail-fast", action="store_true", help="stop at the first failing system")
    add("--verbose", action="store_true", help="show autodeploy's INFO logs")
    return parser


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a comma list of integers.") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{what}: give at least one value, every value >= 1 (got {text!r}).")
    return sorted(set(values))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu.")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: use auto, cpu, cuda or cuda:N.")
    return device


def resolve(ns: argparse.Namespace) -> dict[str, Any]:
    """Checked options with the device-dependent defaults filled in."""
    device = resolve_device(ns.device)
    presets_default, systems_default = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    if ns.osl < 2 or ns.isl < 1:
        raise ConfigError(f"--isl must be >= 1 and --osl >= 2 (got {ns.isl}, {ns.osl}).")
    if ns.repeats < 1 or ns.warmup_tokens < 1:
        raise ConfigError("--repeats and --warmup-tokens must be >= 1.")
    for path in ns.ours_yaml:
        if not Path(path).is_file():
            raise ConfigError(f"--ours-yaml: {path!r} does not exist.")
    names = [p.strip() for p in (ns.preset or presets_default).split(",") if p.strip()]
    systems = parse_systems(ns.systems or systems_default, device.type)
    return {
        "device": device,
        "dtype": torch_dtype(ns.dtype),
        "presets": [load_preset(name) for name in names],
        "systems": systems,
        "batch_sizes": _int_list(ns.batch_sizes, "--batch-sizes"),
    }
