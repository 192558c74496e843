"""One exit-status rule for every command-line tool, applied by the ``tool_main`` decorator.

=====  ==========================================================================================
0      success
1      an internal error (a bug, a failed export or transform), or a run that finished with a
       failure it reports (e.g. a benchmark system that failed)
2      bad input or configuration: a wrong option, setting, path, checkpoint or prompt, or a
       model with a part autodeploy does not support; the message says what to change
130    interrupted (Ctrl-C)
141    the output pipe was closed (``tool | head``): the tool stops quietly
=====  ==========================================================================================

Errors autodeploy raises on purpose are printed as one ``error: ...`` line on stderr, without a
traceback (``AUTODEPLOY_LOG_LEVEL=DEBUG`` adds it); any other exception is a bug and ends the
tool with Python's traceback and status 1.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import (
    AutoDeployError,
    CapacityError,
    ConfigError,
    RegistryError,
    UnsupportedModelError,
)

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe

# Errors the user fixes by changing what they passed in.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    RegistryError,
    CapacityError,
    UnsupportedModelError,  # the model has a part autodeploy cannot run: choose another model
)

Main = TypeVar("Main", bound=Callable[..., int])


def exit_code_for(exc: BaseException) -> int:
    """The exit status an exception ends a tool with (see the module docstring)."""
    if isinstance(exc, BAD_INPUT_ERRORS):
        return EXIT_BAD_INPUT
    if isinstance(exc, AutoDeployError) and isinstance(exc, ValueError):
        return EXIT_BAD_INPUT  # a value the user chose, e.g. a backend that cannot run a node
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL_ERROR


def report_error(exc: BaseException) -> int:
    """Print ``exc`` as one ``error:`` line (a traceback for bugs) and return its exit status."""
    code = exit_code_for(exc)
    debug = os.environ.get("AUTODEPLOY_LOG_LEVEL", "").upper() == "DEBUG"
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return code
    if debug:
        traceback.print_exception(exc)
    label = "" if isinstance(exc, ConfigError) else f"{type(exc).__name__}: "
    print(f"error: {label}{exc}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a real file (e.g. captured in a test): nothing to flush


def tool_main(main: Main) -> Main:
    """Wrap a tool's ``main(argv) -> int``: errors become exit statuses, a closed pipe is quiet."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_CLOSED_PIPE
        except (AutoDeployError, KeyboardInterrupt) as exc:
            return report_error(exc)

    return wrapper  # type: ignore[return-value]
