"""The OpenAI-compatible FastAPI application over one or more ``ModelBackend``s.

``build_app({model_id: backend})`` serves:

- ``POST /v1/completions`` and ``POST /v1/chat/completions``: JSON, or server-sent events with
  ``stream: true`` (one event per step and choice, a last event with ``usage``, then
  ``data: [DONE]``); ``usage`` is in every response;
- ``GET /v1/models``, ``GET /health`` (503 once an engine hit a fatal error),
  ``GET /metrics`` (Prometheus text, see ``metrics.py``).

A client that disconnects has its requests aborted (their pages and slots are freed). Errors
are OpenAI error bodies with the statuses of ``errors.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..runtime.deltas import OutputDelta
from ..runtime.request import RequestOutput
from .backend import DeltaStream, Encoded, ModelBackend
from .errors import APIError, from_exception
from .metrics import ServerMetrics
from .protocol import ChatCompletionRequest, CompletionRequest
from .response_format import ChoiceFormatter

_DISCONNECT_POLL_S = 0.1


def build_app(backends: dict[str, ModelBackend]) -> FastAPI:
    """The application serving ``backends`` (keyed by the ``model`` clients ask for)."""
    app = FastAPI(title="autodeploy", docs_url=None, redoc_url=None)
    metrics = ServerMetrics()
    app.state.backends = backends
    app.state.metrics = metrics
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.get("/health")
    async def health() -> JSONResponse:
        for model_id, backend in backends.items():
            problem = await backend.health()
            if problem is not None:
                return JSONResponse({"status": "error", "model": model_id, "detail": problem}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "autodeploy"}
            for name in backends
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/metrics")
    async def prometheus() -> Response:
        for model_id, backend in backends.items():
            metrics.set_load(model_id, await backend.stats())
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(raw: Request) -> Response:
        return await _serve(raw, CompletionRequest, backends, metrics, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(raw: Request) -> Response:
        return await _serve(raw, ChatCompletionRequest, backends, metrics, chat=True)

    return app


async def _serve(
    raw: Request,
    request_type: type[CompletionRequest] | type[ChatCompletionRequest],
    backends: dict[str, ModelBackend],
    metrics: ServerMetrics,
    *,
    chat: bool,
) -> Response:
    model = "unknown"
    try:
        body = await _json_body(raw)
        request = request_type.model_validate(body)
        model = request.model
        backend = _backend(backends, request.model)
        jobs = await _open_all(backend, request, chat)
    except Exception as exc:  # noqa: BLE001  (every failure becomes an OpenAI error body)
        error = from_exception(exc)
        metrics.requests.labels(model, str(error.status)).inc()
        return error.response()
    formatter = ChoiceFormatter(backend, request, chat, [encoded for encoded, _ in jobs])
    streams = [stream for _, stream in jobs]
    if request.stream:
        events = _sse(formatter, streams, metrics, request.include_usage_in_stream)
        return StreamingResponse(events, media_type="text/event-stream")
    try:
        outputs = await _until_done_or_gone(raw, _collect_all(streams))
    except Exception as exc:  # noqa: BLE001
        error = from_exception(exc)
        metrics.requests.labels(model, str(error.status)).inc()
        return error.response()
    finally:
        for stream in streams:
            stream.abort()
    if outputs is None:  # the client left: its requests were aborted
        metrics.requests.labels(model, "499").inc()
        return Response(status_code=499)
    failed = next((o for o in outputs if o.outputs[0].finish_reason == "error"), None)
    if failed is not None:
        error = APIError(
            500, f"the engine failed this request: {failed.error}", error_type="server_error"
        )
        metrics.requests.labels(model, "500").inc()
        return error.response()
    for output in outputs:
        _observe(metrics, model, output)
    metrics.requests.labels(model, "200").inc()
    return JSONResponse(await formatter.full_response(outputs))


async def _json_body(raw: Request) -> Any:
    try:
        return await raw.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", param="body") from exc


def _backend(backends: dict[str, ModelBackend], model: str) -> ModelBackend:
    backend = backends.get(model)
    if backend is None:
        raise APIError(
            404,
            f"The model {model!r} does not exist; this server serves {sorted(backends)}.",
            error_type="not_found_error",
            param="model",
            code="model_not_found",
        )
    return backend


async def _open_all(
    backend: ModelBackend, request: Any, chat: bool
) -> list[tuple[Encoded, DeltaStream]]:
    """Encode the prompt(s) and queue ``n`` requests per prompt (choice i*n + j). Anything
    queued before a failure is aborted, so a refused request leaves nothing behind."""
    if chat:
        messages = [m.as_template_message() for m in request.messages]
        prompts: list[Encoded] = [await backend.encode(messages=messages)]
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        prompt_logprobs = None
    else:
        prompts = [await backend.encode(prompt=p) for p in request.prompts()]
        logprobs = request.logprobs
        prompt_logprobs = logprobs if request.echo and logprobs is not None else None
    jobs: list[tuple[Encoded, DeltaStream]] = []
    try:
        for encoded in prompts:
            for index in range(request.n):
                params = request.sampling_params(
                    index, backend.sampling_defaults, logprobs, prompt_logprobs
                )
                jobs.append((encoded, await backend.open(encoded, params)))
    except BaseException:
        for _, stream in jobs:
            stream.abort()
        raise
    return jobs


async def _collect(stream: DeltaStream) -> RequestOutput:
    async for delta in stream:
        if delta.output is not None:
            return delta.output
    raise APIError(500, "the engine ended a request without a result", error_type="server_error")


async def _collect_all(streams: Sequence[DeltaStream]) -> list[RequestOutput]:
    return list(await asyncio.gather(*(_collect(s) for s in streams)))


async def _until_done_or_gone(raw: Request, work: Any) -> Any:
    """Await ``work``; None if the client disconnects first (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await raw.is_disconnected():
                return None
    finally:
        if not task.done():
            task.cancel()


async def _merge(streams: Sequence[DeltaStream]) -> AsyncIterator[tuple[int, OutputDelta]]:
    """(choice index, delta) from every stream as they come."""
    if len(streams) == 1:
        async for delta in streams[0]:
            yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, OutputDelta | BaseException]] = asyncio.Queue()

    async def pump(index: int, stream: DeltaStream) -> None:
        try:
            async for delta in stream:
                await queue.put((index, delta))
        except Exception as exc:  # noqa: BLE001  (handed to the consumer)
            await queue.put((index, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(streams)
    try:
        while remaining:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item.finished:
                remaining -= 1
            yield index, item
    finally:
        for task in tasks:
            task.cancel()


async def _sse(
    formatter: ChoiceFormatter,
    streams: Sequence[DeltaStream],
    metrics: ServerMetrics,
    include_usage: bool,
) -> AsyncIterator[str]:
    model = formatter.model_id
    outputs: list[RequestOutput] = []
    status = "200"
    try:
        async for index, delta in _merge(streams):
            if delta.finish_reason == "error":
                status = "500"
                error = APIError(
                    500, f"the engine failed this request: {delta.error}", error_type="server_error"
                )
                yield _event(error.body())
                break
            for chunk in await formatter.chunks(index, delta):
                yield _event(chunk)
            if delta.output is not None:
                outputs.append(delta.output)
                _observe(metrics, model, delta.output)
        else:
            if include_usage:
                yield _event(formatter.usage_chunk(outputs))
        yield "data: [DONE]\n\n"
    except asyncio.CancelledError:  # the client disconnected
        status = "499"
        raise
    finally:
        for stream in streams:
            stream.abort()
        metrics.requests.labels(model, status).inc()


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _observe(metrics: ServerMetrics, model: str, output: RequestOutput) -> None:
    ttft = output.metrics.get("time_to_first_token_s")
    metrics.observe_request(
        model,
        len(output.prompt_token_ids),
        len(output.outputs[0].token_ids),
        ttft,
        output.metrics.get("latency_s", 0.0),
    )
