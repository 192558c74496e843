"""Instruments: cross-cutting work around every transform (timing, logs, dumps, checks, memory).

An instrument sees a transform before and after it runs; transforms never know about them.
The optimizer builds the default set from the environment:

- timing, the per-transform log line (DEBUG) and one progress line per stage (always),
- ``AUTODEPLOY_DUMP_GRAPHS_DIR=dir``: ``dir/NNN_<transform>.txt`` after each transform, plus the
  resolved configuration as ``dir/config.yaml``; when a transform fails, the graph before it as
  ``dir/NNN_<transform>.FAILED.txt`` (with the error),
- ``AUTODEPLOY_VERIFY_GRAPHS=1``: lint and re-generate code of the graph after each transform,
- CUDA memory deltas when a GPU is in use.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml
from torch.fx import GraphModule

from ..utils.dump_dir import DumpDirectory
from ..utils.logger import logger
from .interface import Stages, TransformInfo

DUMP_DIR_ENV = "AUTODEPLOY_DUMP_GRAPHS_DIR"
VERIFY_ENV = "AUTODEPLOY_VERIFY_GRAPHS"


@dataclasses.dataclass
class TransformRecord:
    """One row of the build summary."""

    index: int
    name: str
    stage: Stages
    status: str = "pending"  # ran | disabled | failed
    info: TransformInfo = dataclasses.field(default_factory=TransformInfo)
    time_ms: float = 0.0
    error: str | None = None
    mem_delta_mib: float | None = None

    def as_row(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "transform": self.name,
            "stage": self.stage.value,
            "matches": self.info.num_matches,
            "ms": round(self.time_ms, 1),
            "skipped": self.info.skipped or self.status != "ran",
            "status": self.status,
            "error": self.error,
        }


class Instrument:
    """Base class; override the hooks you need."""

    def on_build_start(self, resolved_config: dict[str, Any] | None) -> None:
        pass

    def before(self, record: TransformRecord, mod: nn.Module) -> None:
        pass

    def after(self, record: TransformRecord, mod: nn.Module) -> None:
        pass

    def on_build_end(self) -> None:
        pass

    def on_failure(self, record: TransformRecord, exc: BaseException) -> str | None:
        """The transform raised ``exc``; return where debugging material was saved, if any."""
        return None


class TimingInstrument(Instrument):
    def before(self, record: TransformRecord, mod: nn.Module) -> None:
        record._start = time.perf_counter()  # type: ignore[attr-defined]

    def after(self, record: TransformRecord, mod: nn.Module) -> None:
        record.time_ms = (time.perf_counter() - record._start) * 1000.0  # type: ignore[attr-defined]


class LogInstrument(Instrument):
    def after(self, record: TransformRecord, mod: nn.Module) -> None:
        if record.status == "disabled":
            logger.debug("disabled")
            return
        logger.debug(  # the compact view shows stages; the summary lists every transform
            "num_matches=%d skipped=%s time=%.1fms%s",
            record.info.num_matches,
            record.info.skipped or record.status != "ran",
            record.time_ms,
            f" error={record.error}" if record.error else "",
        )
        if isinstance(mod, GraphModule):
            logger.debug("graph after transform:\n%s", mod.code)


class GraphDumpInstrument(Instrument):
    """Writes the graph after every transform as FX code: ``NNN_<transform>.txt``."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.files = DumpDirectory(directory)  # removes and overwrites only its own files
        self._code_before = ""  # the graph as it was before the running transform
        self._config = ""

    def on_build_start(self, resolved_config: dict[str, Any] | None) -> None:
        self.files.clear_previous()
        self._config = ""
        if resolved_config is not None:
            self._config = yaml.safe_dump(_plain(resolved_config), sort_keys=False)
            self.files.write_text("config.yaml", self._config)

    def before(self, record: TransformRecord, mod: nn.Module) -> None:
        # Kept as text: a failing transform may leave the graph half rewritten.
        self._code_before = mod.code if isinstance(mod, GraphModule) else repr(mod)

    def on_failure(self, record: TransformRecord, exc: BaseException) -> str | None:
        lines = [
            f"transform={record.name} stage={record.stage.value} FAILED",
            *f"{type(exc).__name__}: {exc}".splitlines(),
            "the graph before it:",
        ]
        text = "".join(f"# {line}\n" for line in lines) + self._code_before
        path = self.files.write_text(f"{record.index:03d}_{record.name}.FAILED.txt", text)
        config = self.directory / "config.yaml"
        return f"{path}, {config}" if self._config else str(path)

    def after(self, record: TransformRecord, mod: nn.Module) -> None:
        if record.status == "disabled":
            return
        name = f"{record.index:03d}_{record.name}.txt"
        header = (
            f"# transform={record.name} stage={record.stage.value} status={record.status} "
            f"num_matches={record.info.num_matches}\n"
        )
        body = mod.code if isinstance(mod, GraphModule) else repr(mod)
        self.files.write_text(name, header + body)


class VerifyInstrument(Instrument):
    """Checks the graph after every transform, so a broken rewrite fails where it happened."""

    def after(self, record: TransformRecord, mod: nn.Module) -> None:
        if record.status != "ran" or not isinstance(mod, GraphModule):
            return
        try:
            mod.graph.lint()
            for node in mod.graph.nodes:
                if node.op == "get_attr":
                    _resolve(mod, str(node.target))
            mod.recompile()
        except Exception as exc:
            raise RuntimeError(
                f"Graph verification failed after transform {record.name!r} "
                f"(stage {record.stage.value}): {exc}"
            ) from exc


class CudaMemoryInstrument(Instrument):
    """Logs how much CUDA memory each transform allocated or freed (over 5 MiB)."""

    def before(self, record: TransformRecord, mod: nn.Module) -> None:
        record._mem = torch.cuda.memory_allocated()  # type: ignore[attr-defined]

    def after(self, record: TransformRecord, mod: nn.Module) -> None:
        delta = (torch.cuda.memory_allocated() - record._mem) / 2**20  # type: ignore[attr-defined]
        record.mem_delta_mib = delta
        if abs(delta) >= 5:
            logger.info("CUDA memory %+.1f MiB", delta)


def default_instruments() -> list[Instrument]:
    from .stage_progress import StageProgressInstrument  # it subclasses Instrument

    instruments: list[Instrument] = [TimingInstrument(), LogInstrument(), StageProgressInstrument()]
    if os.environ.get(DUMP_DIR_ENV):
        instruments.append(GraphDumpInstrument(os.environ[DUMP_DIR_ENV]))
    if os.environ.get(VERIFY_ENV, "0") not in ("", "0", "false", "False"):
        instruments.append(VerifyInstrument())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        instruments.append(CudaMemoryInstrument())
    return instruments


def format_summary(records: list[TransformRecord]) -> str:
    """The end-of-build table: transform, stage, matches, ms, skipped."""
    header = ("#", "transform", "stage", "matches", "ms", "skipped")
    rows = [
        (
            str(r.index),
            r.name,
            r.stage.value,
            str(r.info.num_matches),
            f"{r.time_ms:.1f}",
            "disabled"
            if r.status == "disabled"
            else ("FAILED" if r.status == "failed" else ("yes" if r.info.skipped else "no")),
        )
        for r in records
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    total = sum(r.time_ms for r in records)
    lines.append(f"total {total / 1000.0:.2f} s")
    return "\n".join(lines)


def _resolve(mod: nn.Module, target: str) -> Any:
    value: Any = mod
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _plain(value: Any) -> Any:
    """Make a config dump YAML-safe (enums, paths, dtypes become strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value
    return str(value)
