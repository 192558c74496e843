"""One exit-status rule for every tool (autodeploy/utils/exit_codes.py)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from autodeploy.utils.errors import (
    AutoDeployError,
    CapacityError,
    ConfigError,
    ExportError,
    TransformError,
    UnsupportedModelError,
)
from autodeploy.utils.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_CLOSED_PIPE,
    EXIT_INTERNAL_ERROR,
    tool_main,
)


def _tools_with_main() -> list[str]:
    """Every module of autodeploy.tools that has a ``main`` (a command-line tool)."""
    import autodeploy.tools

    names = []
    for info in pkgutil.iter_modules(autodeploy.tools.__path__):
        try:
            module = importlib.import_module(f"autodeploy.tools.{info.name}")
        except ImportError:  # an optional dependency (e.g. a server) is not installed
            continue
        if callable(getattr(module, "main", None)):
            names.append(info.name)
    return names


TOOLS = _tools_with_main()


@pytest.mark.parametrize(
    "error, code",
    [
        (ConfigError("bad setting"), EXIT_BAD_INPUT),
        (CapacityError("too long"), EXIT_BAD_INPUT),
        (UnsupportedModelError("module X"), EXIT_BAD_INPUT),
        (type("BackendError", (AutoDeployError, ValueError), {})("no"), EXIT_BAD_INPUT),
        (ExportError("export broke"), EXIT_INTERNAL_ERROR),
        (TransformError("transform broke"), EXIT_INTERNAL_ERROR),
    ],
)
def test_errors_map_to_one_exit_status_without_traceback(capsys, error, code):
    @tool_main
    def main(argv=None):
        raise error

    assert main([]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(error) in err and "Traceback" not in err


def test_closed_pipe_is_quiet(capsys):
    @tool_main
    def main(argv=None):
        raise BrokenPipeError(32, "Broken pipe")

    assert main([]) == EXIT_CLOSED_PIPE
    assert capsys.readouterr().err == ""


def test_bugs_keep_their_traceback():
    @tool_main
    def main(argv=None):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        main([])


def test_the_known_tools_are_found():
    assert {"build_and_run", "dump_graph", "list_transforms", "bench", "host_overhead"} <= set(
        TOOLS
    )


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_main_uses_the_rule(tool):
    module = importlib.import_module(f"autodeploy.tools.{tool}")
    assert getattr(module.main, "__wrapped__", None) is not None, f"{tool}.main is not wrapped"
