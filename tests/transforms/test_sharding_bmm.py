"""BMM sharding: a batched matmul over a weight's head dim, split over ranks and gathered.

No Hugging Face architecture we support exports such a matmul (their per-head weights are
linears), so a small custom model mixes each head's channels with its own ``[d, d]`` matrix.
The graph is checked for one rank in this process; the numbers on two real ranks (gloo, two
spawned processes) against the unsplit model.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import re

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from cached_model_helpers import export_with_dynamic_dims
from sharding_helpers import count_collectives, shard_graph

from autodeploy.transforms.library.sharding._heuristic import op_name
from autodeploy.transforms.library.sharding._report import format_plan

VOCAB, HIDDEN, HEADS, HEAD_DIM = 64, 32, 4, 8


class TinyHeadMixModel(nn.Module):
    """Embedding -> per-head bmm (residual) -> MLP (residual) -> LM head."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.head_mix = nn.Parameter(torch.randn(HEADS, HEAD_DIM, HEAD_DIM) / HEAD_DIM**0.5)
        self.up = nn.Linear(HIDDEN, 2 * HIDDEN)
        self.down = nn.Linear(2 * HIDDEN, HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        batch, seq, _ = x.shape
        heads = x.reshape(batch * seq, HEADS, HEAD_DIM).transpose(0, 1)  # [H, tokens, d]
        mixed = torch.bmm(heads, self.head_mix)  # [H, tokens, d]
        x = x + mixed.transpose(0, 1).reshape(batch, seq, HIDDEN)
        x = x + self.down(F.gelu(self.up(x)))
        return self.head(x)


def shard(gm, world_size: int, rank: int, dims: list[str]):
    return shard_graph(gm, world_size, rank, {"sharding_dims": dims})


def nodes(gm, name):
    return [n for n in gm.graph.nodes if op_name(n) == name]


def test_bmm_weight_split_slice_and_gather():
    _, gm = export_with_dynamic_dims(TinyHeadMixModel().eval(), VOCAB)
    gm, plan = shard(gm, 2, rank=1, dims=["bmm"])
    assert gm.get_parameter("head_mix").shape == (2, HEAD_DIM, HEAD_DIM)
    (bmm,) = nodes(gm, "bmm")
    local = bmm.args[0]
    assert op_name(local) == "slice" and local.args[1:] == (0, 2, 4)  # heads 2..3 of rank 1
    assert tuple(bmm.meta["val"].shape[::2]) == (2, HEAD_DIM)
    (gather,) = nodes(gm, "torch_dist_all_gather")
    assert gather.args[0] is bmm and gather.args[1:] == (0, 2)
    assert count_collectives(gm) == (0, 1)  # only "bmm": the MLP and head stay whole
    assert any("head_mix: batched matmul split 4 -> 2 heads" in note for note in plan.notes)
    assert re.search(
        r"head_mix +bmm +heuristic +2x8x8 +all_gather\(dim=0\) +512", format_plan(gm, plan)
    )


def test_heads_not_divisible_are_reported():
    _, gm = export_with_dynamic_dims(TinyHeadMixModel().eval(), VOCAB)
    gm, plan = shard(gm, 3, rank=0, dims=["bmm"])
    assert gm.get_parameter("head_mix").shape == (HEADS, HEAD_DIM, HEAD_DIM)
    assert plan.unsharded["head_mix"] == "batched matmul: 4 heads not divisible by world_size=3"


def test_without_the_bmm_dim_nothing_is_split():
    _, gm = export_with_dynamic_dims(TinyHeadMixModel().eval(), VOCAB)
    gm, plan = shard(gm, 2, rank=0, dims=["tp"])
    assert gm.get_parameter("head_mix").shape == (HEADS, HEAD_DIM, HEAD_DIM)
    assert plan.bmm_splits == [] and nodes(gm, "torch_dist_all_gather")[0].args[1] == -1


def _rank_main(rank: int, world_size: int, store: str, results) -> None:
    """One rank: split the graph (bmm + tp), run it, send the error against the eager model."""
    try:
        dist.init_process_group("gloo", f"file://{store}", rank=rank, world_size=world_size)
        model, gm = export_with_dynamic_dims(TinyHeadMixModel().eval(), VOCAB)
        gm, plan = shard(gm, world_size, rank, dims=["tp", "bmm"])
        input_ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
        position_ids = torch.arange(5).repeat(2, 1)
        with torch.no_grad():
            error = (gm(input_ids, position_ids) - model(input_ids, position_ids)).abs().max()
        results.put((rank, float(error), len(plan.bmm_splits), len(plan.splits)))
    except BaseException as exc:  # noqa: BLE001 (reported to the test)
        results.put((rank, repr(exc), 0, 0))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_ranks_match_the_unsplit_model(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [
        context.Process(target=_rank_main, args=(rank, 2, str(tmp_path / "store"), results))
        for rank in range(2)
    ]
    for process in ranks:
        process.start()
    try:
        got = sorted(results.get(timeout=120) for _ in ranks)
    except queue_module.Empty:
        pytest.fail("a rank did not answer within 120 s")
    finally:
        for process in ranks:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    for rank, error, bmm_splits, linear_splits in got:
        assert isinstance(error, float), f"rank {rank}: {error}"
        assert error < 1e-5, f"rank {rank}: max error {error}"
        assert (bmm_splits, linear_splits) == (1, 3)  # head_mix; up/down pair; the LM head
