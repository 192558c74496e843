"""SSM sharding on the graph of one rank: local shapes, kept rows, collectives, state caches,
bytes per rank, and the mixers left whole (non-divisible heads/groups, no ``ssm`` dim).

Numbers across real ranks: tests/distributed/test_ssm_sharding.py.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from sharding_helpers import (
    canonical,
    count_collectives,
    param_bytes,
    shard,
    shard_graph,
    tiny_dir,
)
from tiny_mamba import export_tiny_mamba
from tiny_models import save_tiny

from autodeploy.custom_ops.mamba.descriptor import CausalConvDescriptor, SSMDescriptor
from autodeploy.transforms.library.sharding._heuristic import op_name
from autodeploy.transforms.library.sharding._report import format_plan
from autodeploy.utils.errors import BuildError, ConfigError

SSM = {"sharding_dims": ["tp", "ssm"]}
MIXER = "model.layers.0.mixer."  # Nemotron-H layer 0: 8 heads of 16, 2 groups, state 16


@pytest.fixture(scope="module")
def nemotron(tmp_path_factory):
    return tiny_dir(tmp_path_factory, "nemotron_h")


def param(gm, name):
    return gm.get_parameter(MIXER + name)


def nodes(gm, name):
    return [n for n in gm.graph.nodes if op_name(n) == name]


def test_local_shapes_and_one_all_reduce_per_mixer(nemotron):
    gm, plan = shard(nemotron, 2, rank=1, detect=SSM)
    # in_proj rows: z 64 + (x 64 + B 16 + C 16) + dt 4 of 128 + 192 + 8
    assert param(gm, "in_proj.weight").shape == (164, 64)
    assert param(gm, "conv1d.weight").shape == (96, 1, 4)
    assert param(gm, "conv1d.bias").shape == (96,)
    for name in ("A_log", "D", "dt_bias"):
        assert param(gm, name).shape == (4,)
    assert param(gm, "norm.weight").shape == (64,)
    assert param(gm, "out_proj.weight").shape == (64, 64)
    (ssm,) = nodes(gm, "torch_ssm")
    assert tuple(ssm.args[0].meta["val"].shape[2:]) == (4, 16)  # local heads
    assert tuple(ssm.args[2].meta["val"].shape[2:]) == (1, 16)  # local groups
    (norm,) = nodes(gm, "torch_rmsnorm_gated")
    assert norm.args[4] == 64  # one whole norm group per rank
    # one all-reduce each for the mixer, the attention layer and the relu^2 MLP; the LM head
    # gathers
    assert count_collectives(gm) == (3, 1)
    in_proj = next(s for s in plan.splits if s.module == MIXER + "in_proj")
    rows = in_proj.indices(1)
    # rank 1: heads 4..7 of z (rows 0..127), x (128..255) and dt (320..327); group 1 of B
    # (256..287) and C (288..319)
    z, x, dt = range(64, 128), range(192, 256), range(324, 328)
    assert rows == [*z, *x, *range(272, 288), *range(304, 320), *dt]
    assert in_proj.strategy == "mamba" and in_proj.source == "heuristic"
    table = format_plan(gm, plan)  # explain_sharding's table: the mixer's other parameters
    bytes_ = (96 * 4 + 96 + 3 * 4 + 64) * 4
    assert re.search(rf"{MIXER[:-1]} \(conv, A, D, dt, norm\) +mamba +heuristic +4 heads, 1 grp"
                     rf" +- +{bytes_:,}", table)  # fmt: skip


def test_state_caches_are_sized_per_rank(nemotron):
    gm, _ = shard(nemotron, 2, rank=0, detect=SSM)
    config = SimpleNamespace(mamba_ssm_cache_dtype="float32", dtype="auto")
    (ssm,) = nodes(gm, "torch_ssm")
    (conv,) = nodes(gm, "torch_causal_conv1d")
    assert SSMDescriptor.get_cache_initializers(ssm, config)["ssm_state"].state_shape == (
        4, 16, 16,
    )  # fmt: skip
    assert CausalConvDescriptor.get_cache_initializers(conv, config)["conv_state"].state_shape == (
        96, 3,
    )  # fmt: skip


def test_weight_bytes_per_rank(nemotron):
    full, _ = canonical(nemotron)
    gm, plan = shard(nemotron, 2, rank=0, detect=SSM)
    mixer_params = [n for n, _ in full.named_parameters() if n.startswith(MIXER)]
    others = [s for s in plan.splits if not s.module.startswith(MIXER)]
    split = [n for s in others for n in (s.weight, s.bias) if n] + mixer_params
    split_bytes = sum(full.get_parameter(n).numel() * 4 for n in split)
    # every mixer parameter is halved except B and C: 2 groups over 2 ranks halve too
    assert param_bytes(gm) == param_bytes(full) - split_bytes // 2


def test_without_ssm_dim_mixers_stay_whole_with_a_hint(nemotron):
    gm, plan = shard(nemotron, 2, detect={})
    assert param(gm, "in_proj.weight").shape == (328, 64)
    assert "add 'ssm' to detect_sharding.sharding_dims" in plan.unsharded[MIXER + "in_proj"]
    assert plan.ssm_layers == []


def test_heads_not_divisible_are_reported_and_left_whole(nemotron):
    gm, plan = shard(nemotron, 3, detect=SSM)
    assert param(gm, "in_proj.weight").shape == (328, 64)
    reason = plan.unsharded[MIXER + "out_proj"]
    assert "num_heads=8" in reason and "world_size=3" in reason
    with pytest.raises(BuildError, match="num_heads=8 of the SSM is not divisible"):
        shard(nemotron, 3, detect=SSM, strict=True)


def test_groups_not_divisible_are_reported(nemotron):
    _, plan = shard(nemotron, 4, detect=SSM)
    assert (
        "n_groups=2 of the SSM is neither 1 nor divisible by world_size=4"
        in (plan.unsharded[MIXER + "in_proj"])
    )


def test_one_group_is_replicated_and_the_norm_reduced(tmp_path_factory):
    path = tmp_path_factory.mktemp("mamba2_g1")
    save_tiny(path, "mamba2", n_groups=1)
    gm, plan = shard(path, 2, rank=1, detect=SSM)
    (layer, _) = plan.ssm_layers
    assert "1 SSM group (B, C) replicated over 2 ranks" in layer.note
    in_proj = next(s for s in plan.splits if s.strategy == "mamba")
    # rank 1 keeps group 0 of B (rows 256..271) and C (272..287): x is 128..255
    # rows: z 0..127, x 128..255, B 256..271, C 272..287, dt 288..295; rank 1 keeps heads 4..7
    # and the one group
    rows = in_proj.indices(1)
    assert rows == [*range(64, 128), *range(192, 256), *range(256, 288), *range(292, 296)]
    assert nodes(gm, "torch_rmsnorm_gated") == []  # replaced by the all-reduced norm
    assert count_collectives(gm) == (4, 1)  # per mixer: out_proj + the norm's sum of squares


def test_manual_mamba_pattern_must_match_a_mixer(nemotron):
    detect = {"manual_config": {"tp_plan": {"layers.*.mixr": "mamba"}}}
    with pytest.raises(ConfigError, match="matches no Mamba mixer.*layers.\\*.mixer"):
        shard(nemotron, 2, detect=detect)
    gm, plan = shard(
        nemotron, 2, detect={"manual_config": {"tp_plan": {"layers.*.mixer": "mamba"}}}
    )
    assert {s.module: s.source for s in plan.splits}[MIXER + "in_proj"] == "manual"
    assert param(gm, "in_proj.weight").shape == (164, 64)


def test_mixer_without_gate_or_norm():
    """The canonical-op test model: in_proj is [xBC | dt] (no z), no gated norm."""
    _, gm = export_tiny_mamba()
    gm, plan = shard_graph(gm, 2, rank=0, detect=SSM)
    # 4 heads of 8, 2 groups of state 8: x rows 0..31, B 32..47, C 48..63, dt 64..67
    in_proj = next(s for s in plan.splits if s.strategy == "mamba")
    assert in_proj.indices(0) == [*range(16), *range(32, 40), *range(48, 56), 64, 65]
    assert gm.get_parameter("mixers.0.conv1d.weight").shape == (32, 1, 4)
    assert len(plan.ssm_layers) == 2 and count_collectives(gm) == (2, 1)
