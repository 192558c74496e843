"""Expert parallelism across real ranks (CPU, gloo): greedy tokens equal Hugging Face eager.

One LLM per case; each checks its plan (which experts its rank holds) on the same group.
Graph-level checks (local shapes, collectives, grid errors) are in
tests/transforms/test_sharding_moe.py.
"""

from __future__ import annotations

import pytest
from test_multi_rank import SETTINGS, checkpoint, tokens, worker_pids

from autodeploy import LLM
from autodeploy.runtime.all_token_logits import find_graph_module

# arch, world size, detect_sharding settings, expected strategy, rank 0's experts of 4
CASES = {
    "mixtral": ("mixtral", 2, {}, "ep: experts 0-1 of 4"),
    "qwen3_moe": ("qwen3_moe", 2, {}, "ep: experts 0-1 of 4"),
    "qwen2_moe_shared_expert": ("qwen2_moe", 2, {}, "ep: experts 0-1 of 4"),
    "qwen3_moe_ep2_tp2": (
        "qwen3_moe",
        4,
        {"process_grid": {"ep": 2, "tp": 2}},
        "ep x tp: experts 0-1 of 4, I/2 (grid ep=2 x tp=2)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_expert_parallel_matches_hugging_face(tmp_path, case):
    arch, world, detect, described = CASES[case]
    path, expected = checkpoint(tmp_path, arch)
    transforms = {"detect_sharding": {"stage": "sharding", **detect}}
    with LLM(str(path), world_size=world, transforms=transforms, **SETTINGS) as llm:
        assert len(worker_pids()) == world - 1
        assert tokens(llm) == expected
        gm = find_graph_module(llm.model)
        plan = gm.meta["sharding_plan"]
        assert [split.describe(0) for split in plan.experts][:1] == [described]
        moe = next(n for n in gm.graph.nodes if "moe" in str(n.target))
        local_experts = 4 // (world if not detect else 2)
        assert moe.args[3].meta["val"].shape[0] == local_experts
    assert worker_pids() == []
