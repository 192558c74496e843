"""Compact progress output on stderr: build stages as they pass, and progress bars.

On a terminal a bar redraws one line (at most ten times a second); elsewhere (a log file, a
pipe) it prints one line when it starts and one when it ends, so logs stay short. Progress is
shown on rank 0 at log level INFO or below (``AUTODEPLOY_LOG_LEVEL=WARNING`` hides it).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from . import logger as logger_module

_REDRAW_S = 0.1
_BAR_WIDTH = 24


def progress_enabled() -> bool:
    """Progress goes to the user: rank 0 and the package logger shows INFO."""
    return logger_module._rank == 0 and logger_module.logger.isEnabledFor(logging.INFO)


def format_bytes(num: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num) < 1024 or unit == "GiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} GiB"  # pragma: no cover - the loop always returns


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar:
    """``label [#####-----] 1.2 GiB/4.0 GiB 30% ETA 0:12``; ``unit='bytes'`` or ``'items'``."""

    def __init__(self, label: str, total: float, unit: str = "items", stream: TextIO | None = None):
        self.label = label
        self.total = max(float(total), 0.0)
        self.unit = unit
        self.done = 0.0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = progress_enabled()
        self.interactive = self.enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._closed = False
        if self.enabled and not self.interactive:
            self._write(f"[autodeploy] {self.label}: {self._amount(self.total)} ...\n")

    def advance(self, amount: float = 1.0) -> None:
        self.done += amount
        now = time.perf_counter()
        if self.interactive and now - self._last_draw >= _REDRAW_S:
            self._last_draw = now
            self._write("\r" + self.render(now))

    def render(self, now: float | None = None) -> str:
        """The bar line (without the carriage return)."""
        now = time.perf_counter() if now is None else now
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(fraction * _BAR_WIDTH)
        elapsed = now - self._start
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        return (
            f"[autodeploy] {self.label} [{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] "
            f"{self._amount(self.done)}/{self._amount(self.total)} {fraction * 100:3.0f}% "
            f"ETA {format_duration(eta)}"
        )

    def close(self) -> None:
        """Finish the bar with a summary line (idempotent)."""
        if self._closed or not self.enabled:
            self._closed = True
            return
        self._closed = True
        elapsed = time.perf_counter() - self._start
        line = f"[autodeploy] {self.label}: {self._amount(self.done)} in {elapsed:.1f} s"
        self._write(
            ("\r" + " " * len(self.render()) + "\r" if self.interactive else "") + line + "\n"
        )

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _amount(self, value: float) -> str:
        return format_bytes(value) if self.unit == "bytes" else f"{value:.0f}"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False  # the stream went away (closed pipe): progress is optional


class StageProgress:
    """One line per build stage as the build passes it: ``stage 3/10 export done in 2.1 s``."""

    def __init__(self, stages: list[str], stream: TextIO | None = None):
        self.stages = stages
        self.stream = stream if stream is not None else sys.stderr
        self.current: str | None = None
        self._start = 0.0
        self._transforms = 0

    def enter(self, stage: str) -> None:
        """Called before each transform with its stage; closes the previous stage."""
        if stage == self.current:
            self._transforms += 1
            return
        self.finish()
        self.current, self._start, self._transforms = stage, time.perf_counter(), 1

    def finish(self) -> None:
        """Print the line of the stage in progress, if any."""
        if self.current is None:
            return
        if progress_enabled():
            number = self.stages.index(self.current) + 1 if self.current in self.stages else 0
            plural = "s" if self._transforms != 1 else ""
            self._write(
                f"[autodeploy] stage {number:>2}/{len(self.stages)} {self.current:<16} "
                f"{self._transforms} transform{plural}, {time.perf_counter() - self._start:.1f} s\n"
            )
        self.current = None

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass
