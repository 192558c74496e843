"""Process groups: which rank this is, how it was launched, and the groups the ranks share.

Two groups: the world group carries the model's collectives (NCCL on CUDA, gloo on CPU:
``dist_backend: auto``) with a bounded timeout, so a lost rank ends a step with an error
instead of a hang; a gloo control group carries rank 0's per-step messages with a long timeout,
because workers legitimately wait there while the user is idle. Errors a rank catches are
written to the rendezvous store, so rank 0 can name the rank and its exception.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..utils.errors import ConfigError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
COLLECTIVE_TIMEOUT = timedelta(minutes=5)
CONTROL_TIMEOUT = timedelta(days=7)
_ERROR_KEY = "autodeploy/error/rank{}"


@dataclass
class DistContext:
    """This process's place among the ranks (and the groups once initialized)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str = "gloo"
    control_group: Any = field(default=None, repr=False)
    store: Any = field(default=None, repr=False)  # the rendezvous key-value store

    @property
    def is_driver(self) -> bool:
        return self.rank == 0

    def report_error(self, message: str) -> None:
        """Leave this rank's error where rank 0 looks for it (best effort: the store may be
        gone if rank 0 itself ended)."""
        try:
            self._store().set(_ERROR_KEY.format(self.rank), message)
        except Exception:  # noqa: BLE001 - reporting must never hide the original error
            pass

    def _store(self) -> Any:
        return self.store or dist.distributed_c10d._get_default_store()

    def reported_errors(self) -> dict[int, str]:
        """rank -> the error it reported (rank 0's view, after a failed step)."""
        found: dict[int, str] = {}
        try:
            store = self._store()
        except Exception:  # noqa: BLE001
            return found
        for rank in range(self.world_size):
            key = _ERROR_KEY.format(rank)
            try:
                if store.check([key]):
                    found[rank] = store.get(key).decode(errors="replace")
            except Exception:  # noqa: BLE001
                break
        return found


def launched_by_torchrun() -> bool:
    """True when torchrun (torchelastic) started this process: its variables are all set."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def torchrun_context(world_size: int) -> DistContext:
    """The rank layout torchrun gave this process; ``world_size`` must match its WORLD_SIZE."""
    launched = int(os.environ["WORLD_SIZE"])
    if launched != world_size:
        raise ConfigError(
            f"world_size={world_size} but torchrun started {launched} processes "
            f"(WORLD_SIZE={launched}). Set world_size: {launched} or run torchrun with "
            f"--nproc-per-node/--nnodes giving {world_size} processes."
        )
    return DistContext(
        rank=int(os.environ["RANK"]),
        world_size=launched,
        local_rank=int(os.environ["LOCAL_RANK"]),
    )


def resolve_backend(device: str) -> str:
    """``dist_backend: auto``: NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def check_devices(world_size: int, device: str, ranks_on_this_node: int) -> None:
    """More ranks on this node than GPUs is a ConfigError before anything is built."""
    if not str(device).startswith("cuda"):
        return
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if ranks_on_this_node > found:
        raise ConfigError(
            f"world_size={world_size} needs {ranks_on_this_node} GPUs on this node but "
            f"{found} {'was' if found == 1 else 'were'} found. Run on fewer ranks "
            f"(world_size: {max(found, 1)}), on a node with more GPUs, or across nodes with "
            "torchrun; `device: cpu` runs any world size (gloo)."
        )


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


READY_KEY = "autodeploy/ready/rank{}"


def connect_store(context: DistContext, port: int) -> None:
    """The rendezvous store of a local launch (rank 0 serves it on 127.0.0.1:``port``).

    Joining it first lets a worker that fails before the process groups exist still report
    its error, and lets rank 0 see which workers are ready before it waits in the rendezvous.
    """
    context.store = dist.TCPStore(
        "127.0.0.1",
        port,
        context.world_size,
        is_master=context.rank == 0,
        timeout=COLLECTIVE_TIMEOUT,
        wait_for_workers=False,
    )


def mark_ready(context: DistContext) -> None:
    context.store.set(READY_KEY.format(context.rank), "1")


def all_ready(context: DistContext) -> bool:
    keys = [READY_KEY.format(rank) for rank in range(1, context.world_size)]
    return context.store.check(keys)


def init_process_groups(context: DistContext, device: str) -> None:
    """Join the world group (through ``context.store`` when set, else torchrun's env://) and
    create the control group."""
    from ..utils.logger import set_rank

    set_rank(context.rank)  # ranks other than 0 log warnings only
    context.backend = resolve_backend(device)
    if str(device).startswith("cuda"):
        torch.cuda.set_device(context.local_rank)
    rendezvous: dict[str, Any] = (
        {"store": context.store} if context.store is not None else {"init_method": "env://"}
    )
    dist.init_process_group(
        backend=context.backend,
        rank=context.rank,
        world_size=context.world_size,
        timeout=COLLECTIVE_TIMEOUT,
        **rendezvous,
    )
    context.control_group = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


def destroy_process_groups() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer may already be gone; nothing left to free
            pass
