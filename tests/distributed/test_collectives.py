"""torch_dist_all_reduce / torch_dist_all_gather on two gloo ranks, and their fakes."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch._subclasses.fake_tensor import FakeTensorMode

import autodeploy.custom_ops  # noqa: F401

ad = torch.ops.auto_deploy


def _rank_main(rank: int, port: int, results) -> None:

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x = torch.full((2, 3), float(rank + 1))
        reduced = ad.torch_dist_all_reduce(x)
        gathered = ad.torch_dist_all_gather(torch.arange(3.0) + 10 * rank, -1, 2)
        results.put((rank, reduced.tolist(), x.tolist(), gathered.tolist()))
    finally:
        dist.destroy_process_group()


def test_collectives_on_two_gloo_ranks():
    from autodeploy.distributed.process_group import find_free_port

    context = mp.get_context("spawn")
    results = context.Queue()
    port = find_free_port()
    processes = [context.Process(target=_rank_main, args=(r, port, results)) for r in range(2)]
    for process in processes:
        process.start()
    try:
        got = sorted(results.get(timeout=120) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    for rank, reduced, original, gathered in got:
        assert reduced == [[3.0] * 3] * 2  # 1 + 2 on every rank
        assert original == [[float(rank + 1)] * 3] * 2  # the input is not modified
        assert gathered == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]


def test_fakes_and_single_process_identity():
    with FakeTensorMode():
        x = torch.empty(4, 1, 8)
        assert ad.torch_dist_all_reduce(x).shape == (4, 1, 8)
        assert ad.torch_dist_all_gather(x, -1, 4).shape == (4, 1, 32)
    x = torch.randn(2, 3)
    assert torch.equal(ad.torch_dist_all_reduce(x), x)  # no process group: one rank
