"""Start or join the ranks of one job.

``RankGroup.start(args)`` in the caller's process:

- under ``torchrun`` (its variables are set): join the launch; this process is whatever rank
  torchrun gave it;
- otherwise: start ranks 1..N-1 as fresh interpreters (``python -m
  autodeploy.distributed.worker``, the settings pickled through stdin) and become rank 0. Like
  the ``spawn`` start method, but the caller's ``__main__`` is not re-imported, so scripts need
  no ``if __name__ == "__main__"`` guard. The workers build the same model and serve rank 0's
  steps (``worker.py``); they die with rank 0 (they watch its pid).

After each rank's build, ``agree_after_build`` gathers every rank's result, so a rank that failed
to build ends the job on every rank with its error. ``failure(exc)`` turns a failed step into a
``DistributedError`` naming the rank(s) that reported an error or exited. ``shutdown()`` tells
the workers to stop, waits a bounded time and kills what is left: no orphans.
"""

from __future__ import annotations

import collections
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import torch.distributed as dist

from ..utils.errors import DistributedError
from ..utils.logger import logger
from .process_group import (
    DistContext,
    all_ready,
    check_devices,
    connect_store,
    destroy_process_groups,
    find_free_port,
    init_process_groups,
    launched_by_torchrun,
    torchrun_context,
)

STOP_MESSAGE = ("stop",)
JOIN_TIMEOUT_S = 10.0
FAILURE_GRACE_S = 3.0  # how long rank 0 waits for a failing rank to write its error / exit
READY_TIMEOUT_S = 300.0  # starting a worker: a fresh interpreter importing torch


class RankGroup:
    """The ranks of one job as seen from this process (see the module docstring)."""

    def __init__(self, context: DistContext, processes: list[Any]):
        self.context = context
        self.processes = processes  # spawned workers (rank 1.. in order); empty under torchrun
        self._stopped = False

    @classmethod
    def start(cls, args: Any) -> RankGroup:
        device = args.resolved_device()
        world_size = args.world_size
        if launched_by_torchrun():
            context = torchrun_context(world_size)
            local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            check_devices(world_size, device, local_ranks)
            init_process_groups(context, device)
            return cls(context, [])
        check_devices(world_size, device, world_size)
        port = find_free_port()
        payload = pickle.dumps(args)
        processes = [
            WorkerProcess(rank, world_size, port, payload) for rank in range(1, world_size)
        ]
        logger.info("spawned ranks 1..%d (pids %s)", world_size - 1, [p.pid for p in processes])
        context = DistContext(rank=0, world_size=world_size, local_rank=0)
        group = cls(context, processes)
        try:
            connect_store(context, port)
            group._wait_until_workers_ready()
            init_process_groups(context, device)
        except Exception as exc:
            raise group.failure(exc) from exc
        return group

    def _wait_until_workers_ready(self) -> None:
        """Wait for every worker to reach the rendezvous, or for one to fail on the way."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all_ready(self.context):
            exited = [p for p in self.processes if p.exitcode is not None]
            if exited or self.context.reported_errors():
                raise DistributedError("a rank ended before joining the process group")
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"the worker ranks did not start within {READY_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.05)

    # ------------------------------------------------------------------ protocol

    def agree_after_build(self, result: Any = None, error: BaseException | None = None) -> list:
        """Every rank's build result (in rank order); raise if any rank failed to build."""
        status = ("error", _describe(error)) if error is not None else ("ok", result)
        gathered: list[Any] = [None] * self.context.world_size
        try:
            dist.all_gather_object(gathered, status, group=self.context.control_group)
        except Exception as exc:
            raise self.failure(exc) from exc
        failed = {rank: s[1] for rank, s in enumerate(gathered) if s[0] == "error"}
        if failed:
            self.shutdown()
            raise DistributedError(_format_failures(failed, "failed to build"))
        return [s[1] for s in gathered]

    def broadcast(self, message: Any) -> Any:
        """Rank 0 sends ``message``; every other rank returns what rank 0 sent."""
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.context.control_group)
        return box[0]

    # ------------------------------------------------------------------ failures, shutdown

    def failure(self, exc: BaseException) -> DistributedError:
        """The error that ends the job after ``exc`` on this rank; stops every worker."""
        deadline = time.monotonic() + FAILURE_GRACE_S
        while time.monotonic() < deadline and self.processes:
            if any(p.exitcode is not None for p in self.processes):
                break
            time.sleep(0.05)
        time.sleep(0.2)  # let a failing rank finish writing its error
        failed = self.context.reported_errors()
        for rank, process in enumerate(self.processes, start=1):
            if rank not in failed and process.exitcode not in (None, 0):
                failed[rank] = f"the process exited with {_exit_reason(process.exitcode)}"
                if process.last_lines:
                    failed[rank] += f" after printing: {process.last_lines[-1][:300]}"
        self.shutdown(graceful=False)
        if not failed:
            return DistributedError(
                f"rank {self.context.rank} failed in a collective: {type(exc).__name__}: "
                f"{exc}. No other rank reported an error; check the other ranks' logs."
            )
        return DistributedError(
            _format_failures(failed, "failed") + f" (rank {self.context.rank}"
            f" saw: {type(exc).__name__}: {str(exc)[:200]})"
        )

    def shutdown(self, graceful: bool = True) -> None:
        """Stop every worker (idempotent): a stop message, a bounded wait, then kill."""
        if self._stopped:
            return
        self._stopped = True
        if graceful and self.context.is_driver:
            try:
                self.broadcast(STOP_MESSAGE)
            except Exception as exc:  # noqa: BLE001 - a worker is gone; kill below
                logger.warning("could not send the stop message to every rank: %s", exc)
        deadline = time.monotonic() + (JOIN_TIMEOUT_S if graceful else 0.5)
        for process in self.processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join(timeout=JOIN_TIMEOUT_S)
        destroy_process_groups()


class WorkerProcess:
    """One started worker rank (a ``subprocess.Popen`` with a Process-like surface)."""

    def __init__(self, rank: int, world_size: int, port: int, payload: bytes):
        self.rank = rank
        command = [sys.executable, "-m", "autodeploy.distributed.worker"]
        command += [str(rank), str(world_size), str(port), str(os.getpid())]
        self._popen = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._popen.stdin is not None
        self._popen.stdin.write(payload)
        self._popen.stdin.close()
        # The worker's stderr is passed through; its last lines name an error it could not
        # report otherwise (e.g. one raised while importing, before it reached the store).
        self.last_lines: collections.deque[str] = collections.deque(maxlen=5)
        threading.Thread(target=self._relay_stderr, daemon=True).start()

    def _relay_stderr(self) -> None:
        assert self._popen.stderr is not None
        for raw in self._popen.stderr:
            line = raw.decode(errors="replace")
            sys.stderr.write(line)
            if line.strip():
                self.last_lines.append(line.strip())

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        try:
            self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        if self.is_alive():
            self._popen.kill()


def _describe(error: BaseException | None) -> str:
    if error is None:
        return ""
    return f"{type(error).__name__}: {error}"


def _exit_reason(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _format_failures(failed: dict[int, str], what: str) -> str:
    parts = [
        f"rank {rank} {what}: {message.rstrip('.')}" for rank, message in sorted(failed.items())
    ]
    return "; ".join(parts) + ". Every rank of the job was stopped."
