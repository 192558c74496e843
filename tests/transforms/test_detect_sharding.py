"""detect_sharding: the plan each source makes, in priority order, and its errors."""

from __future__ import annotations

import pytest
from sharding_helpers import shard, strategies, tiny_dir

from autodeploy.utils.errors import BuildError, ConfigError


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_dir(tmp_path_factory, "llama")


ATTN = "model.layers.{}.self_attn.{}"
MLP = "model.layers.{}.mlp.{}"


def test_world_size_one_plans_nothing(llama):
    gm, plan = shard(llama, 1)
    assert plan is None


def test_default_sources_factory_then_heuristic(llama):
    gm, plan = shard(llama, 2)
    found = strategies(plan)
    for layer in (0, 1):
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert found[ATTN.format(layer, proj)] == ("colwise", "factory")
        assert found[ATTN.format(layer, "o_proj")] == ("rowwise", "factory")
        assert found[MLP.format(layer, "gate_proj")] == ("colwise", "factory")
        assert found[MLP.format(layer, "down_proj")] == ("rowwise", "factory")
    # The HF plan does not cover the LM head: the heuristic splits it with a gather.
    assert found["lm_head"] == ("gather", "heuristic")
    assert len(plan.splits) == 15


def test_heuristic_only_matches_factory_plan(llama):
    _, factory_plan = shard(llama, 2)
    _, heuristic_plan = shard(llama, 2, detect={"sharding_source": ["heuristic"]})
    assert {m: s for m, (s, _) in strategies(heuristic_plan).items()} == {
        m: s for m, (s, _) in strategies(factory_plan).items()
    }
    assert {src for _, src in strategies(heuristic_plan).values()} == {"heuristic"}
    for a, b in zip(factory_plan.splits, heuristic_plan.splits):
        assert a.indices(1) == b.indices(1) or a.module != b.module


def test_gqa_with_fewer_kv_heads_than_ranks_replicates(llama):
    """2 KV heads over 4 ranks: ranks 0,1 keep KV head 0; ranks 2,3 KV head 1 (reported)."""
    _, plan = shard(llama, 4, rank=3, detect={"sharding_source": ["heuristic"]})
    k_proj = next(s for s in plan.splits if s.module == ATTN.format(0, "k_proj"))
    assert k_proj.segments[0].kept == [[0], [0], [1], [1]]
    assert k_proj.indices(3) == list(range(16, 32))
    assert any("KV heads replicated" in note for note in plan.notes)


def test_factory_plan_that_does_not_fit_falls_to_heuristic(llama):
    _, plan = shard(llama, 4)
    assert strategies(plan)[ATTN.format(0, "k_proj")] == ("colwise", "heuristic")
    assert any("factory plan not applied" in note for note in plan.notes)


def test_heads_not_divisible_are_reported_unsplit(llama):
    gm, plan = shard(llama, 3, detect={"sharding_source": ["heuristic"]})
    reason = plan.unsharded[ATTN.format(0, "q_proj")]
    assert "num_attention_heads=4 is not divisible by world_size=3" in reason
    assert plan.unsharded["model.embed_tokens"].startswith("embedding: replicated")
    (problem,) = gm.meta["_autodeploy"]["problems"]
    assert "15 linear layers stay whole on every rank" in problem.message
    with pytest.raises(BuildError, match="stay whole"):
        shard(llama, 3, detect={"sharding_source": ["heuristic"]}, strict=True)


def test_manual_plan_wins_and_partial_falls_through(llama):
    tp_plan = {"layers.*.mlp.gate_proj": "colwise", "layers.*.mlp.up_proj": "colwise",
               "layers.*.mlp.down_proj": "rowwise"}  # fmt: skip
    _, plan = shard(llama, 2, detect={"manual_config": {"tp_plan": tp_plan}})
    found = strategies(plan)
    assert found[MLP.format(1, "up_proj")] == ("colwise", "manual")
    assert found[ATTN.format(1, "o_proj")] == ("rowwise", "factory")


def test_partial_manual_plan_rejected_without_support_partial_config(llama):
    detect = {
        "manual_config": {"tp_plan": {"layers.*.mlp.down_proj": "rowwise"}},
        "support_partial_config": False,
        "sharding_source": ["manual", "heuristic"],
    }
    gm, plan = shard(llama, 2, detect=detect)
    assert {src for _, src in strategies(plan).values()} == {"heuristic"}
    problems = gm.meta["_autodeploy"]["problems"]
    assert any("support_partial_config is false" in p.message for p in problems)
    with pytest.raises(BuildError, match="support_partial_config"):
        shard(llama, 2, detect=detect, strict=True)


def test_manual_plan_errors_suggest_names(llama):
    with pytest.raises(ConfigError, match="unknown strategy 'colwse'.*'colwise'"):
        shard(llama, 2, detect={"manual_config": {"tp_plan": {"*.q_proj": "colwse"}}})
    with pytest.raises(ConfigError, match="matches no linear.*q_proj"):
        shard(
            llama, 2, detect={"manual_config": {"tp_plan": {"layers.*.self_attn.q_prj": "colwise"}}}
        )
    with pytest.raises(ConfigError, match="do not divide over world_size=4"):
        shard(
            llama, 4, detect={"manual_config": {"head_dim": 16, "tp_plan": {"*.k_proj": "colwise"}}}
        )


def test_process_grid_checks(llama):
    with pytest.raises(ConfigError, match="unknown process_grid axis 'ex'.*Axes: ep, tp"):
        shard(llama, 4, detect={"process_grid": {"ex": 2, "tp": 2}})
    gm, _ = shard(llama, 4, detect={"process_grid": {"ep": 2, "tp": 3}})
    problems = [p.message for p in gm.meta["_autodeploy"]["problems"]]
    assert any("6 ranks but world_size=4" in m for m in problems)


def test_simple_shard_only_gathers_every_linear(llama):
    _, plan = shard(llama, 2, detect={"simple_shard_only": True, "sharding_source": ["heuristic"]})
    assert len(plan.splits) == 15
    assert {s for s, _ in strategies(plan).values()} == {"gather"}
