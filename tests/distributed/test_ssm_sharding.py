"""Mamba mixers split over two ranks (CPU, gloo): greedy tokens equal one rank and HF eager.

One launch per model keeps the time bounded: Nemotron-H (mamba + attention + MLP layers, the
``ssm`` heuristic) and pure Mamba-2 with one SSM group (the manual ``mamba`` strategy, B and C
replicated, the gated norm's sum of squares all-reduced).
"""

from __future__ import annotations

from test_multi_rank import PROMPTS, SETTINGS, hf_greedy, tokens, worker_pids
from tiny_models import save_tiny
from torch.fx import GraphModule

from autodeploy import LLM
from autodeploy.runtime.all_token_logits import find_graph_module


def _run(path, world_size: int, detect: dict):
    transforms = {"detect_sharding": {"stage": "sharding", **detect}}
    with LLM(str(path), world_size=world_size, transforms=transforms, **SETTINGS) as llm:
        got = tokens(llm)
        gm = find_graph_module(llm.model)
        plan = gm.meta.get("sharding_plan")
        reduces = sum(
            "torch_dist_all_reduce" in str(node.target)  # after compile: the op's wrapper
            for module in gm.modules()
            if isinstance(module, GraphModule)
            for node in module.graph.nodes
        )
    assert worker_pids() == []
    return got, plan, reduces


def test_nemotron_h_ssm_heuristic_two_ranks(tmp_path):
    model = save_tiny(tmp_path, "nemotron_h")
    expected = [hf_greedy(model, p) for p in PROMPTS]
    detect = {"sharding_dims": ["tp", "ssm"]}
    one_rank, _, _ = _run(tmp_path, 1, detect)
    two_ranks, plan, reduces = _run(tmp_path, 2, detect)
    assert one_rank == expected
    assert two_ranks == expected
    assert [layer.module for layer in plan.ssm_layers] == ["model.layers.0.mixer"]
    assert plan.ssm_layers[0].local_sizes == {"heads": 4, "groups": 1}
    # the mixer's out_proj, the attention's o_proj and the relu^2 MLP's down_proj
    assert reduces == 3
    mlp = {s.module.rsplit(".", 1)[-1]: s.strategy for s in plan.splits if ".2." in s.module}
    assert mlp == {"up_proj": "colwise", "down_proj": "rowwise"}


def test_mamba2_one_group_manual_plan_two_ranks(tmp_path):
    model = save_tiny(tmp_path, "mamba2", n_groups=1)
    expected = [hf_greedy(model, p) for p in PROMPTS]
    detect = {"manual_config": {"tp_plan": {"layers.*.mixer": "mamba"}}}
    two_ranks, plan, reduces = _run(tmp_path, 2, detect)
    assert two_ranks == expected
    assert {s.source for s in plan.splits if s.module.endswith("_proj")} == {"manual"}
    assert len(plan.ssm_layers) == 2
    assert all("replicated" in layer.note for layer in plan.ssm_layers)
    assert reduces == 2 * 2  # per mixer: out_proj and the gated norm's sum of squares
