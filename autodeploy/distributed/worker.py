"""The ranks other than 0: build the same model, then serve rank 0's steps until it stops.

Each step message is the plain batch description ``("step", input_ids, input_pos, cache_loc,
slot_idx, all_token_logits)``, the last saying whether the step runs the model variant without
the logit gather. The worker lays the batch out with ``nest_sequences`` and runs the forward
(its logits are not used: only rank 0 samples). An exception is written to the rendezvous
store (rank 0 names it in its error) and ends the process.
"""

from __future__ import annotations

import traceback
from typing import Any

import torch

from ..utils.logger import logger
from .launch import RankGroup
from .process_group import DistContext, connect_store, init_process_groups, mark_ready


def serve_steps(group: RankGroup, model: Any, cm: Any) -> int:
    """Run every step rank 0 broadcasts until it sends stop; return the number of steps."""
    from ..runtime.all_token_logits import without_logit_gather

    steps = 0
    all_token_model = None  # made on first use, like rank 0's engine does
    while True:
        message = group.broadcast(None)
        if message[0] == "stop":
            return steps
        _, input_ids, input_pos, cache_loc, slot_idx, all_token_logits = message
        cm.info.nest_sequences(input_ids, input_pos, cache_loc, slot_idx=slot_idx)
        if all_token_logits and all_token_model is None:
            all_token_model = without_logit_gather(model)
        with torch.inference_mode():
            (all_token_model if all_token_logits else model)(**cm.named_args)
        steps += 1


def build_and_serve(group: RankGroup, args: Any) -> None:
    """A worker rank's whole life after joining the process groups."""
    from ..runtime.builder import build_from_args

    try:
        build = build_from_args(args, rank=group.context.rank, local_rank=group.context.local_rank)
    except Exception as exc:
        group.agree_after_build(error=exc)
        raise
    group.agree_after_build(result=build.cm.num_pages)
    steps = serve_steps(group, build.model, build.cm)
    logger.info("rank %d: stopped after %d steps", group.context.rank, steps)


def spawned_worker_main(rank: int, world_size: int, port: int, args: Any) -> None:
    """Entry point of a started rank (``launch.RankGroup.start``)."""
    from ..plugins import load_plugins

    context = DistContext(rank=rank, world_size=world_size, local_rank=rank)
    group = RankGroup(context, [])
    try:
        connect_store(context, port)
        load_plugins()
        _limit_threads(world_size)
        mark_ready(context)
        init_process_groups(context, args.resolved_device())
        build_and_serve(group, args)
    except BaseException as exc:  # report anything, then end this rank
        message = f"{type(exc).__name__}: {exc}"
        context.report_error(message)
        logger.error("rank %d failed: %s\n%s", rank, message, traceback.format_exc())
        raise SystemExit(1) from None
    finally:
        group.shutdown(graceful=False)


def _limit_threads(world_size: int) -> None:
    """Share the host's cores between the ranks instead of oversubscribing them."""
    import os

    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // world_size))


def _exit_with_parent(parent_pid: int) -> None:
    """End this rank when rank 0's process is gone (killed rank 0: no orphans)."""
    import os
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="autodeploy-parent-watch", daemon=True).start()


def main(argv: list[str]) -> None:
    """``python -m autodeploy.distributed.worker RANK WORLD_SIZE PORT PARENT_PID`` with the
    pickled settings on stdin."""
    import pickle
    import sys

    rank, world_size, port, parent_pid = (int(value) for value in argv)
    _exit_with_parent(parent_pid)
    args = pickle.loads(sys.stdin.buffer.read())
    spawned_worker_main(rank, world_size, port, args)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
