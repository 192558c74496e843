"""tools/serve.py command-line errors (the serving itself is tested over HTTP elsewhere)."""

from __future__ import annotations

import pytest

from autodeploy.tools import serve as serve_tool


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--port", "http"], "--port 'http'"),
        (["--port", "70000"], "0..65535"),
        (["--modle", "x"], "Did you mean '--model'"),
        (["--models", "a.yaml", "--max-batch-size", "4"], "do not apply to model files"),
        (["--models", "missing.yaml"], "missing.yaml is not a file"),
    ],
)
def test_bad_command_lines_exit_2_with_the_reason(argv, fragment, capsys):
    assert serve_tool.main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_help_lists_the_flags_and_settings(capsys):
    assert serve_tool.main(["-h"]) == 0
    text = capsys.readouterr().out
    assert "--models" in text and "--max-waiting-requests" in text and "--trust-remote-code" in text
