"""The session's test server: the built-in tiny model behind a real uvicorn on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def served() -> Iterator[Any]:
    """A ``serve_helpers.RunningServer`` (skips the test without the serve extra)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from serve_helpers import SETTINGS, serve_llm

    from autodeploy import LLM

    llm = LLM(model="builtin:tiny-llama", max_waiting_requests=64, **SETTINGS)
    running = serve_llm(llm)
    try:
        yield running
    finally:
        running.stop()
        llm.shutdown()
