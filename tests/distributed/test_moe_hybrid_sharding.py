"""A Mamba-2 + MoE hybrid over two ranks (CPU, gloo) with every sharding dimension on.

Nemotron-H with ``moe`` layers (the Nemotron-3-Nano layout: mamba, moe, attention; ungated
relu^2 experts, a shared expert), ``sharding_dims: [tp, ep, bmm, ssm]``: the mixer's heads split
(``ssm``), the routed experts split (``ep``: two of four per rank), the attention and the shared
expert split (``tp``); greedy tokens equal Hugging Face eager. One launch keeps the time bounded
(GraniteMoeHybrid's gated experts: tests/models/test_moe_hybrids.py at one rank, the gated EP
path across ranks in test_expert_parallel.py).
"""

from __future__ import annotations

from test_multi_rank import PROMPTS, SETTINGS, hf_greedy, tokens, worker_pids
from tiny_models import save_tiny

from autodeploy import LLM
from autodeploy.runtime.all_token_logits import find_graph_module


def test_nemotron_h_moe_all_dims_two_ranks(tmp_path):
    model = save_tiny(tmp_path, "nemotron_h_moe")
    expected = [hf_greedy(model, p) for p in PROMPTS]
    detect = {"stage": "sharding", "sharding_dims": ["tp", "ep", "bmm", "ssm"]}
    with LLM(
        str(tmp_path), world_size=2, transforms={"detect_sharding": detect}, **SETTINGS
    ) as llm:
        assert len(worker_pids()) == 1
        assert tokens(llm) == expected
        plan = find_graph_module(llm.model).meta["sharding_plan"]
    assert worker_pids() == []
    assert [layer.module for layer in plan.ssm_layers] == ["model.layers.0.mixer"]
    assert plan.ssm_layers[0].local_sizes == {"heads": 4, "groups": 1}
    assert [split.describe(0) for split in plan.experts] == ["ep: experts 0-1 of 4"]
    strategies = {s.module.removeprefix("model.layers."): s.strategy for s in plan.splits}
    assert strategies["1.mixer.shared_experts.up_proj"] == "colwise"
    assert strategies["1.mixer.shared_experts.down_proj"] == "rowwise"
    assert strategies["2.mixer.q_proj"] == "colwise"
    assert strategies["2.mixer.o_proj"] == "rowwise"
