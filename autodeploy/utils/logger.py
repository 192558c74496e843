"""The package logger: level from AUTODEPLOY_LOG_LEVEL, rank-aware, with a context prefix.

INFO messages logged inside a transform (under a ``log_prefix``) are shown only at DEBUG: the
default view is one progress line per stage plus the build summary (``utils/progress.py``).

Ranks other than 0 log warnings and errors only, unless AUTODEPLOY_LOG_ALL_RANKS=1, so a
multi-rank run prints one copy of the progress output.
"""

import contextlib
import contextvars
import logging
import os
import sys
from collections.abc import Iterator

LOG_LEVEL_ENV = "AUTODEPLOY_LOG_LEVEL"
_VALID_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

logger = logging.getLogger("autodeploy")
_prefix: contextvars.ContextVar[str] = contextvars.ContextVar("autodeploy_log_prefix", default="")
_rank = 0


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _rank != 0 and record.levelno < logging.WARNING:
            if os.environ.get("AUTODEPLOY_LOG_ALL_RANKS") != "1":
                return False
        record.ad_rank = f" rank={_rank}" if _rank else ""
        prefix = _prefix.get()
        if prefix and record.levelno == logging.INFO and not logger.isEnabledFor(logging.DEBUG):
            return False  # details from inside a transform: DEBUG only (the summary has them)
        record.ad_prefix = f"{prefix} " if prefix else ""
        return True


def _level_from_env() -> int:
    raw = os.environ.get(LOG_LEVEL_ENV, "INFO").strip().upper()
    if raw not in _VALID_LEVELS:
        sys.stderr.write(
            f"[autodeploy] {LOG_LEVEL_ENV}={raw!r} is not one of {', '.join(_VALID_LEVELS)}; "
            "using INFO.\n"
        )
        raw = "INFO"
    return getattr(logging, raw)


def configure_logging() -> None:
    """(Re)read the level from the environment; idempotent."""
    logger.setLevel(_level_from_env())
    if not any(getattr(h, "_autodeploy", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[autodeploy%(ad_rank)s] %(levelname)s %(ad_prefix)s%(message)s")
        )
        handler.addFilter(_ContextFilter())
        handler._autodeploy = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


def set_rank(rank: int) -> None:
    """Tell the logger which distributed rank this process is."""
    global _rank
    _rank = rank


@contextlib.contextmanager
def log_prefix(prefix: str) -> Iterator[None]:
    """Prefix every message logged inside the block, e.g. ``[stage=export, transform=x]``."""
    token = _prefix.set(prefix)
    try:
        yield
    finally:
        _prefix.reset(token)


configure_logging()
