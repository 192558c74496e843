"""Helpers of the serving tests: a real uvicorn server on 127.0.0.1 (a free port)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from autodeploy import LLM  # noqa: E402
from autodeploy.runtime.async_llm import AsyncLLM  # noqa: E402

MODEL_ID = "tiny"
SETTINGS = dict(
    device="cpu",
    attn_backend="torch",
    max_seq_len=512,
    max_batch_size=8,
    kv_cache_config={"tokens_per_block": 8, "max_tokens": 4096},
)
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    url: str  # http://127.0.0.1:PORT
    llm: LLM
    app: object
    server: object
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_server(app: object) -> tuple[object, threading.Thread, str]:
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def serve_llm(llm: LLM) -> RunningServer:
    from autodeploy.serve.backend import LocalBackend
    from autodeploy.serve.openai_app import build_app

    app = build_app({MODEL_ID: LocalBackend(AsyncLLM.from_llm(llm), MODEL_ID)})
    server, thread, url = start_server(app)
    return RunningServer(url, llm, app, server, thread)


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
