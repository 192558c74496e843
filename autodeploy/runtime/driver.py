"""EngineDriver: one thread owns the engine loop; any thread submits requests.

The engine is not thread-safe: only the thread holding ``_engine_lock`` touches it. Callers hand
the driver requests through a FIFO inbox (``submit``, ``abort``), which only the driver thread
reads, and receive ``OutputDelta``s through a callback (``sink``) called after every step that
gave their request a token, on the thread that ran the step; the last delta has
``finished=True`` and the complete ``RequestOutput``.

``generate`` is the blocking form used by ``LLM.generate``: requests of several threads share
the engine's batches. While a ``generate`` call waits, it runs the steps itself, on its own
thread, and the driver thread only admits requests. Why: on CPU, PyTorch's OpenMP gives each
thread that runs parallel kernels its own worker pool, and once a process has more pool threads
than cores, every worker stops busy-waiting between kernels (libgomp's throttled spin), so
each parallel kernel then pays a thread wake-up. Stepping on the caller's thread (the one that
built the model) keeps a script at one pool. Servers, which never call ``generate``, step on the
driver thread.

Admission: ``submit`` checks on the caller's thread that the request can ever fit
(``CapacityError`` with both sizes) and, when ``max_waiting_requests`` is set and the caller
asks for it, that the waiting queue has room (``QueueFullError``). Nothing is queued when
either check fails.

Failures: if a step raises, the requests running in it end with finish_reason "error" (their
pages and slots freed) and the engine goes on with the others. A fatal error (out of memory, a
CUDA error, or ``MAX_FAILED_STEPS`` failed steps in a row) ends every request, and ``submit``
raises ``EngineDeadError`` from then on; ``fatal_error`` says why (the server's /health fails).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..utils.errors import (
    CapacityError,
    ConfigError,
    DistributedError,
    EngineDeadError,
    QueueFullError,
)
from ..utils.logger import logger
from .deltas import DeltaTracker, OutputDelta, rejected_delta
from .engine import Engine
from .prompts import rejection_message
from .request import RequestOutput
from .sampling import SamplingParams

Sink = Callable[[OutputDelta], None]
# Failed steps in a row (no step succeeding in between) after which the engine counts as broken:
# a few bad requests in a row must not take the server down.
MAX_FAILED_STEPS = 8
_STOP = object()
_WAKE = object()  # a generate() call stopped stepping: the driver thread checks for work again
# How long a generate() call waits for the driver to admit its requests before looking again.
_ADMISSION_POLL_S = 0.0005


@dataclass
class _Submission:
    handle: int
    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: str | None
    sink: Sink
    final_only: bool  # only the last delta is wanted: no per-step text work
    submitted_at: float = field(default_factory=time.perf_counter)


class EngineDriver:
    """Owns ``engine`` on a daemon thread (see the module docstring)."""

    def __init__(self, engine: Engine, *, max_waiting_requests: int | None = None):
        self.engine = engine
        self.max_waiting_requests = max_waiting_requests
        self.fatal_error: str | None = None
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._next_handle = itertools.count()
        self._lock = threading.Lock()
        self._num_inbox = 0  # submissions not yet handed to the engine
        self._trackers: dict[int, DeltaTracker] = {}  # handle -> tracker (driver thread only)
        self._sinks: dict[int, Sink] = {}  # handle -> where its deltas go (driver thread)
        self._engine_ids: dict[int, int] = {}  # handle -> engine request id (driver thread)
        self._handles: dict[int, int] = {}  # engine request id -> handle (driver thread)
        self._streaming: dict[int, None] = {}  # handles that want every delta, in order
        self._failed_steps = 0
        self._engine_lock = threading.Lock()  # held while applying commands or stepping
        self._callers = 0  # generate() calls running the steps on their own thread
        self._thread = threading.Thread(target=self._loop, name="autodeploy-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ any thread

    @property
    def num_waiting(self) -> int:
        """Requests not running yet: in the inbox or in the engine's waiting queue."""
        return self._num_inbox + self.engine.num_waiting

    @property
    def alive(self) -> bool:
        return self.fatal_error is None and self._thread.is_alive()

    def submit(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        sink: Sink,
        *,
        prompt: str | None = None,
        limit_queue: bool = False,
        final_only: bool = False,
    ) -> int:
        """Queue a request; returns its handle (for ``abort`` and in its deltas). ``final_only``:
        ``sink`` gets only the last delta (cheaper: no text is made per step)."""
        if not self.alive:
            raise EngineDeadError(
                f"The engine stopped after a fatal error ({self.fatal_error or 'driver ended'}); "
                "no new requests are accepted. Restart the process."
            )
        ids = list(prompt_token_ids)
        self.engine.check_request(ids, params)
        with self._lock:
            limit = self.max_waiting_requests
            if limit_queue and limit is not None and self.num_waiting >= limit:
                raise QueueFullError(
                    f"{self.num_waiting} requests are waiting (max_waiting_requests={limit}); "
                    "retry later."
                )
            handle = next(self._next_handle)
            self._num_inbox += 1
        self._inbox.put(_Submission(handle, ids, params, prompt, sink, final_only))
        return handle

    def abort(self, handle: int) -> None:
        """End a request early (finish_reason "abort"); unknown or finished handles are ignored."""
        self._inbox.put(("abort", handle))

    def generate(
        self, encoded: Sequence[tuple[str | None, list[int]]], params: Sequence[SamplingParams]
    ) -> list[RequestOutput]:
        """Run every prompt to the end (blocking); outputs in input order. A request that can
        never fit gets finish_reason "error" instead of stopping the others."""
        done: queue.SimpleQueue[OutputDelta] = queue.SimpleQueue()
        results: list[RequestOutput | None] = [None] * len(encoded)
        pending: dict[int, int] = {}  # handle -> index
        with self._lock:
            self._callers += 1
        try:
            for index, ((text, ids), sp) in enumerate(zip(encoded, params)):
                try:
                    handle = self.submit(ids, sp, done.put, prompt=text, final_only=True)
                except CapacityError as exc:
                    exc = CapacityError(rejection_message(exc, index))  # the index, not an id
                    logger.warning("%s", exc)
                    results[index] = self.engine.make_rejected(ids, sp, exc, prompt=text)
                    continue
                pending[handle] = index
            while pending:
                timeout = None if self._step_here() else _ADMISSION_POLL_S
                _collect(done, pending, results, timeout)
        finally:
            for handle in pending:  # interrupted: leave the engine clean
                self.abort(handle)
            with self._lock:
                self._callers -= 1
            self._inbox.put(_WAKE)
        return [r for r in results if r is not None]

    def _step_here(self) -> bool:
        """Run one engine step on this thread if there is work; False if there was none (the
        driver has not admitted this caller's requests yet, or it stopped)."""
        with self._engine_lock:
            if not self._thread.is_alive() or not self.engine.has_unfinished():
                return False
            try:
                self._step_once()
            except BaseException:  # e.g. KeyboardInterrupt mid-step: fail that step's requests
                self._on_step_error(RuntimeError("the step was interrupted"))
                raise
            return True

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Abort every request and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join(timeout_s)

    # ------------------------------------------------------------------ driver thread

    def _loop(self) -> None:
        try:
            self._run_steps()
        except BaseException as exc:  # a bug in the driver itself: nobody may wait forever
            logger.exception("the engine driver stopped")
            self.fatal_error = f"the engine driver stopped: {type(exc).__name__}: {exc}"
            with self._engine_lock:
                self._end_all(self.fatal_error)
            raise

    def _run_steps(self) -> None:
        engine = self.engine
        while True:
            # While a generate() call steps, this thread only admits requests (blocking read).
            idle = self._callers > 0 or not engine.has_unfinished()
            if not self._take_commands(block=idle):
                break
            if self._callers > 0 or not engine.has_unfinished():
                continue
            with self._engine_lock:
                self._step_once()
        with self._engine_lock:
            self._end_all(FINISH_MESSAGE_SHUTDOWN)

    def _step_once(self) -> None:
        """One engine step and its deltas (holding ``_engine_lock``)."""
        try:
            finished = self.engine.step()
        except Exception as exc:  # noqa: BLE001  (one bad step must not kill the server)
            self._on_step_error(exc)
            return
        self._failed_steps = 0
        by_engine_id = self._handles
        done = {by_engine_id[o.request_id]: o for o in finished if o.request_id in by_engine_id}
        self._dispatch(list(self._streaming), done)

    def _take_commands(self, block: bool) -> bool:
        """Apply queued commands; False when the driver must stop."""
        while True:
            try:
                command = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if command is _STOP:
                return False
            if command is _WAKE:
                continue
            with self._engine_lock:
                if isinstance(command, _Submission):
                    self._add(command)
                else:
                    self._abort(command[1])

    def _add(self, submission: _Submission) -> None:
        engine = self.engine
        with self._lock:
            self._num_inbox -= 1
        try:
            if self.fatal_error is not None:
                raise EngineDeadError(f"the engine stopped: {self.fatal_error}")
            request = engine.add_request(
                submission.prompt_token_ids, submission.params, prompt=submission.prompt
            )
            request.arrival_time = submission.submitted_at  # latency metrics include the inbox
        except (CapacityError, ConfigError, EngineDeadError) as exc:
            output = engine.make_rejected(
                submission.prompt_token_ids, submission.params, exc, submission.prompt
            )
            _deliver(submission.sink, rejected_delta(submission.handle, output))
            return
        self._trackers[submission.handle] = DeltaTracker(
            submission.handle, request, engine.tokenizer
        )
        self._sinks[submission.handle] = submission.sink
        self._engine_ids[submission.handle] = request.request_id
        self._handles[request.request_id] = submission.handle
        if not submission.final_only:
            self._streaming[submission.handle] = None

    def _abort(self, handle: int) -> None:
        request_id = self._engine_ids.get(handle)
        if request_id is not None:
            self.engine.abort_request(request_id)
            self._dispatch([handle])

    def _dispatch(
        self, handles: Sequence[int], finished: dict[int, RequestOutput] | None = None
    ) -> None:
        """Deliver the deltas of ``handles`` (streaming ones) and of ``finished`` requests."""
        finished = finished or {}
        for handle in [*handles, *(h for h in finished if h not in self._streaming)]:
            tracker = self._trackers.get(handle)
            if tracker is None:
                continue
            delta = tracker.next_delta(finished.get(handle))
            if delta is None:
                continue
            sink = self._sinks[handle]
            if delta.finished:
                request_id = self._engine_ids.pop(handle)
                del self._trackers[handle], self._sinks[handle], self._handles[request_id]
                self._streaming.pop(handle, None)
            _deliver(sink, delta)

    def _on_step_error(self, exc: Exception) -> None:
        self._failed_steps += 1
        message = f"engine step failed: {type(exc).__name__}: {exc}"
        if _is_fatal(exc) or self._failed_steps >= MAX_FAILED_STEPS:
            logger.error("fatal engine error, refusing new requests: %s", message)
            self.fatal_error = message
            self._end_all(message)
            return
        running = set(self.engine.running_request_ids())
        logger.error("%s; failing the %d requests in that step", message, len(running))
        for handle, request_id in list(self._engine_ids.items()):
            if request_id in running:
                self.engine.fail_request(request_id, message)
                self._dispatch([handle])

    def _end_all(self, message: str) -> None:
        for handle, request_id in list(self._engine_ids.items()):
            self.engine.fail_request(request_id, message)
            self._dispatch([handle])
        while True:  # submissions that never reached the engine
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, _Submission):
                self._num_inbox -= 1
                output = self.engine.make_rejected(
                    command.prompt_token_ids, command.params, CapacityError(message)
                )
                _deliver(command.sink, rejected_delta(command.handle, output))


FINISH_MESSAGE_SHUTDOWN = "the engine was shut down"


def _is_fatal(exc: Exception) -> bool:
    """Errors after which the device state cannot be trusted (a lost rank: the job ended)."""
    text = str(exc)
    if isinstance(exc, (MemoryError, DistributedError)):
        return True
    return "CUDA error" in text or "out of memory" in text


def _collect(
    done: queue.SimpleQueue[OutputDelta],
    pending: dict[int, int],
    results: list[RequestOutput | None],
    timeout: float | None,
) -> None:
    """Move finished outputs from ``done`` into ``results``: whatever is there now, or (with a
    timeout) the first to arrive within it."""
    while pending:
        try:
            delta = done.get(block=timeout is not None, timeout=timeout)
        except queue.Empty:
            return
        timeout = None
        if delta.request_id in pending:
            results[pending.pop(delta.request_id)] = delta.output


def _deliver(sink: Sink, delta: OutputDelta) -> None:
    try:
        sink(delta)
    except Exception:  # noqa: BLE001  (a broken consumer must not stop the engine)
        logger.exception("a request's output consumer raised; its request is dropped")
