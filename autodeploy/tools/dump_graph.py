"""Run the pipeline and write the graph after every transform, plus a summary.

    python -m autodeploy.tools.dump_graph --out DIR [--model M] [--yaml-extra a.yaml ...]
        [--stop-after NAME] [--disable A,B] [--args.X.Y=V ...]

Writes into DIR:
  NNN_<transform>.txt   the graph after that transform, as FX code (one per transform that ran)
  config.yaml           the resolved configuration, with the source of every value
  summary.txt           transform, stage, matches, ms, skipped (+ problems and coverage)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..config import LlmArgs, cli_help_text, format_resolved_config, parse_cli
from ..custom_ops.backend_resolver import format_backend_table, recorded_choices
from ..models import create_factory
from ..transforms import InferenceOptimizer, Stages
from ..transforms.instruments import (
    GraphDumpInstrument,
    TransformRecord,
    default_instruments,
    format_summary,
)
from ..transforms.optimizer import META_KEY
from ..utils.errors import AutoDeployError, ConfigError
from ..utils.logger import logger
from ..utils.suggest import did_you_mean

FLAGS = ("out", "stop_after", "disable", "help")


def select_transforms(
    transforms: dict[str, Any], stop_after: str | None, disable: list[str]
) -> dict[str, Any]:
    """The pipeline in run order, cut after ``stop_after``, with ``disable`` turned off."""
    ordered = sorted(transforms.items(), key=lambda item: Stages(item[1]["stage"]).order)
    names = [name for name, _ in ordered]
    for name in [*disable, *([stop_after] if stop_after else [])]:
        if name not in transforms:
            raise ConfigError(
                f"{name!r} is not in the pipeline.{did_you_mean(name, names)} "
                f"Pipeline: {', '.join(names)}."
            )
    selected: dict[str, Any] = {}
    for name, cfg in ordered:
        selected[name] = {**cfg, "enabled": False} if name in disable else dict(cfg)
        if name == stop_after:
            break
    return selected


def write_summary(path: Path, gm: Any) -> str:
    meta = getattr(gm, "meta", {}).get(META_KEY, {})
    records: list[TransformRecord] = meta.get("records", [])
    lines = [format_summary(records)] if records else ["(no transform ran)"]
    for problem in meta.get("problems", []):
        lines.append(f"problem: [{problem.stage}/{problem.transform}] {problem.message}")
    coverage = meta.get("coverage")
    if coverage is not None:
        lines += ["", "pattern coverage:", str(coverage)]
    choices = recorded_choices(gm)
    if choices:
        lines += ["", "backends per op family:", format_backend_table(choices)]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    try:
        cli = parse_cli(argv, flags=FLAGS)
        if cli.get("help"):
            print(__doc__)
            print(cli_help_text(flags=FLAGS))
            return 0
        if not cli.get("out"):
            raise ConfigError("--out DIR is required (where the graph dumps go).")
        out = Path(cli["out"])
        args = LlmArgs.from_cli(cli["args"])
        disable = [d for d in str(cli.get("disable") or "").split(",") if d]
        selected = select_transforms(args.to_dict()["transforms"], cli.get("stop_after"), disable)
        out.mkdir(parents=True, exist_ok=True)
        config_text = format_resolved_config(args)
        instruments = [
            *[i for i in default_instruments() if not isinstance(i, GraphDumpInstrument)],
            GraphDumpInstrument(out),
        ]
        optimizer = InferenceOptimizer(
            create_factory(args), selected, strict=args.strict, instruments=instruments
        )
        cm = _sequence_interface(args, selected)
        gm = optimizer(cm)
        (out / "config.yaml").write_text(config_text)
        print(write_summary(out / "summary.txt", gm))
        print(f"graphs written to {out}")
        return 0
    except AutoDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _sequence_interface(args: LlmArgs, selected: dict[str, Any]) -> Any:
    """The sequence interface, only if a transform that needs one is going to run."""
    needs_cm = any(Stages(cfg["stage"]) >= Stages.WEIGHT_LOAD for cfg in selected.values())
    if not needs_cm:
        return None
    from ..runtime.builder import make_sequence_interface

    logger.info("pipeline reaches weight loading: building the sequence interface")
    return make_sequence_interface(args, args.resolved_device())


if __name__ == "__main__":
    sys.exit(main())
