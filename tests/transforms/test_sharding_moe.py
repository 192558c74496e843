"""EP and EP x TP of MoE layers at graph level: local expert weights, one all-reduce per MoE
layer, grid problems, per-rank bytes, checkpoint slices on load, the plan table.

Numbers across real ranks (greedy tokens vs Hugging Face) are in
tests/distributed/test_expert_parallel.py; the op contract (ids outside the local experts add
nothing) in tests/custom_ops/test_torch_moe.py and test_triton_moe.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from sharding_helpers import canonical, count_collectives, param_bytes, shard, tiny_dir
from tiny_models import tiny_model

from autodeploy.models.checkpoint import find_checkpoint_files
from autodeploy.models.moe_checkpoint import ExpertStacker
from autodeploy.models.sliced_loading import load_slices_of, read_safetensors_sliced
from autodeploy.transforms.library.sharding._heuristic import op_name
from autodeploy.transforms.library.sharding._report import format_plan
from autodeploy.utils.errors import BuildError, ConfigError

GRID = {"process_grid": {"ep": 2, "tp": 2}}
EXPERTS = "model.layers.{}.mlp.experts.{}"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return {arch: tiny_dir(tmp_path_factory, arch) for arch in ("mixtral", "qwen3_moe")}


def moe_nodes(gm):
    return [n for n in gm.graph.nodes if op_name(n) == "torch_moe"]


def expert_bytes(gm) -> int:
    return sum(
        p.numel() * p.element_size() for name, p in gm.named_parameters() if ".experts." in name
    )


def test_one_all_reduce_per_moe_layer_and_local_expert_dim(dirs):
    before, _ = canonical(dirs["mixtral"])
    reduces_without_ep, _ = count_collectives(
        shard(dirs["mixtral"], 2, detect={"sharding_dims": ["tp"]})[0]
    )
    for rank in (0, 1):
        gm, plan = shard(dirs["mixtral"], 2, rank=rank)
        nodes = moe_nodes(gm)
        assert len(nodes) == len(moe_nodes(before)) == 2
        assert count_collectives(gm)[0] == reduces_without_ep + len(nodes)
        for layer, node in enumerate(nodes):
            (user,) = node.users
            assert op_name(user) == "torch_dist_all_reduce"
            local_ids = node.args[1]
            assert op_name(local_ids) == "sub" and local_ids.args[1] == 2 * rank
            assert node.args[3].meta["val"].shape == (2, 256, 64)  # E/world of 4 experts
            assert gm.get_parameter(EXPERTS.format(layer, "down_proj")).shape == (2, 64, 128)
            assert gm.get_submodule(EXPERTS.format(layer, "")[:-1]).expert_range == (
                2 * rank,
                2 * rank + 2,
            )
        assert plan.unsharded["model.layers.0.mlp.gate"].startswith("router:")
        assert not gm.meta["_autodeploy"]["problems"]  # the router is not a reported fallback


def test_ep_x_tp_keeps_an_intermediate_slice_of_the_group_experts(dirs):
    gm, plan = shard(dirs["qwen3_moe"], 4, rank=3, detect=GRID)
    (split, _) = plan.experts
    assert (split.ep_size, split.tp_size, split.experts(3)) == (2, 2, (2, 4))
    assert split.inter_indices(3) == list(range(16, 32))  # the second half of I=32
    assert gm.get_parameter(EXPERTS.format(0, "gate_up_proj")).shape == (2, 32, 64)
    assert gm.get_parameter(EXPERTS.format(0, "down_proj")).shape == (2, 64, 16)
    assert count_collectives(gm)[0] == 2 * 2  # o_proj + one per MoE layer, 2 layers
    table = format_plan(gm, plan)
    assert "ep x tp: experts 2-3 of 4, I/2 (grid ep=2 x tp=2)" in table
    assert "2x32x64, 2x64x16" in table


@pytest.mark.parametrize(
    "world, detect", [(2, {}), (4, GRID), (4, {"process_grid": {"tp": 4, "ep": 1}})]
)
def test_expert_bytes_per_rank_are_the_expected_share(dirs, world, detect):
    full, _ = canonical(dirs["qwen3_moe"])
    for rank in range(world):
        gm, _ = shard(dirs["qwen3_moe"], world, rank=rank, detect=detect)
        assert expert_bytes(gm) == expert_bytes(full) // world
        assert f"parameter bytes on rank {rank}: {param_bytes(gm):,}" in format_plan(
            gm, gm.meta["sharding_plan"]
        )


def test_grid_product_mismatch_is_reported_and_uses_1d_ep(dirs):
    gm, plan = shard(dirs["qwen3_moe"], 4, detect={"process_grid": {"ep": 2, "tp": 3}})
    problems = [p.message for p in gm.meta["_autodeploy"]["problems"]]
    assert any("{'ep': 2, 'tp': 3} has 6 ranks but world_size=4" in m for m in problems)
    assert {(s.ep_size, s.tp_size) for s in plan.experts} == {(4, 1)}
    assert gm.get_parameter(EXPERTS.format(0, "gate_up_proj")).shape == (1, 64, 64)
    with pytest.raises(BuildError, match="6 ranks but world_size=4.*strict"):
        shard(dirs["qwen3_moe"], 4, detect={"process_grid": {"ep": 2, "tp": 3}}, strict=True)
    with pytest.raises(ConfigError, match="unknown process_grid axis 'epp'. Did you mean 'ep'"):
        shard(dirs["qwen3_moe"], 4, detect={"process_grid": {"epp": 2, "tp": 2}})


def test_experts_not_dividing_over_ranks_stay_whole_and_are_reported(dirs):
    gm, plan = shard(dirs["qwen3_moe"], 4, detect={"process_grid": {"ep": 4, "tp": 1},
                                                  "sharding_dims": ["ep"]})  # fmt: skip
    assert len(plan.experts) == 2  # 4 experts over 4 ranks: fine
    gm, plan = shard(dirs["qwen3_moe"], 3, detect={"sharding_dims": ["ep"]})
    assert plan.experts == []
    problems = [p.message for p in gm.meta["_autodeploy"]["problems"]]
    expected = "model.layers.0.mlp.experts: 4 experts are not divisible by ep=3 (world_size=3)"
    assert any(m.startswith(expected) for m in problems)
    assert gm.get_parameter(EXPERTS.format(0, "gate_up_proj")).shape == (4, 64, 64)
    assert count_collectives(gm) == (0, 0)
    with pytest.raises(BuildError, match="4 experts are not divisible by ep=3"):
        shard(dirs["qwen3_moe"], 3, detect={"sharding_dims": ["ep"]}, strict=True)


@pytest.mark.parametrize("detect", [{"sharding_dims": ["tp"]}, {"sharding_source": ["factory"]}])
def test_ep_off_leaves_experts_whole(dirs, detect):
    """EP is a heuristic: it runs with `ep` in sharding_dims and `heuristic` among the sources."""
    gm, plan = shard(dirs["qwen3_moe"], 2, detect=detect)
    assert plan.experts == [] and not any(op_name(n) == "sub" for n in gm.graph.nodes)
    assert gm.get_parameter(EXPERTS.format(0, "down_proj")).shape == (4, 64, 32)


@pytest.mark.parametrize("source", ["per-expert checkpoint", "stacked state dict"])
def test_each_rank_loads_only_its_experts_and_slice(dirs, source):
    """Per-expert tensors (save_pretrained) through the expert stacker; a stacked full state
    dict through the slicing pre-hooks: both give the HF weights' slice of this rank."""
    reference = tiny_model("qwen3_moe")  # the weights tiny_dir saved (seed 0)
    full = dict(reference.named_parameters())
    _, factory = canonical(dirs["qwen3_moe"])
    for rank in (1, 2):
        gm, _ = shard(dirs["qwen3_moe"], 4, rank=rank, detect=GRID)
        if source == "per-expert checkpoint":
            factory.load_or_random_init(gm, "cpu")
        else:
            gm = copy.deepcopy(gm).to_empty(device="cpu")
            gm.load_state_dict(reference.state_dict(), strict=False)
        start = 2 * (rank // 2)
        inter = slice(16 * (rank % 2), 16 * (rank % 2) + 16)
        for layer in (0, 1):
            gate_up = full[EXPERTS.format(layer, "gate_up_proj")][start : start + 2]
            gate, up = gate_up[:, :32][:, inter], gate_up[:, 32:][:, inter]
            local = gm.get_parameter(EXPERTS.format(layer, "gate_up_proj"))
            torch.testing.assert_close(local, torch.cat([gate, up], dim=1), rtol=0, atol=0)
            down = full[EXPERTS.format(layer, "down_proj")][start : start + 2, :, inter]
            torch.testing.assert_close(
                gm.get_parameter(EXPERTS.format(layer, "down_proj")), down, rtol=0, atol=0
            )


def test_other_ranks_expert_tensors_are_never_read(dirs):
    """The safetensors reader skips the per-expert tensors of experts the rank does not hold."""
    _, factory = canonical(dirs["qwen3_moe"])
    gm, _ = shard(dirs["qwen3_moe"], 4, rank=2, detect=GRID)  # experts 2-3, second half of I
    stacker = ExpertStacker(gm, factory._expert_converters, factory._key_renamer)
    (path,) = find_checkpoint_files(dirs["qwen3_moe"])
    read = read_safetensors_sliced(path, load_slices_of(gm), factory._key_renamer,
                                   stacker.held_elsewhere)  # fmt: skip
    experts = {int(key.split(".experts.")[1].split(".")[0]) for key in read if ".experts." in key}
    assert experts == {2, 3}
    per_expert = [key for key in read if ".experts." in key]
    assert len(per_expert) == 2 * 2 * 3  # layers x local experts x (gate, up, down)


def test_shared_expert_split_by_tp_and_its_gate_replicated(tmp_path_factory):
    """Qwen2-MoE: the shared expert is an ordinary MLP (TP), its one-output gate and the router
    stay whole by choice (no reported problem); one all-reduce for each."""
    path = tiny_dir(tmp_path_factory, "qwen2_moe")
    gm, plan = shard(path, 2, rank=1, detect={"sharding_source": ["heuristic"]})
    found = {s.module: s.strategy for s in plan.splits}
    shared = "model.layers.0.mlp.shared_expert."
    assert [found[shared + name] for name in ("gate_proj", "up_proj", "down_proj")] == [
        "colwise",
        "colwise",
        "rowwise",
    ]
    assert plan.unsharded["model.layers.0.mlp.shared_expert_gate"].startswith("moe gate:")
    assert plan.unsharded["model.layers.0.mlp.gate"].startswith("router:")
    assert not gm.meta["_autodeploy"]["problems"]
    assert [s.describe(1) for s in plan.experts] == ["ep: experts 2-3 of 4"]  # layer 1 is dense


def test_ungated_experts_keep_their_slice_of_the_up_rows(tmp_path_factory):
    """Nemotron-H's ungated experts (``up_proj [E, I, H]``) under EP x TP: each rank keeps its
    experts and its half of I (up rows and down columns), loaded from the per-expert
    checkpoint tensors, and the sharded MoE op computes its share of the full op."""
    path = tiny_dir(tmp_path_factory, "nemotron_h_moe")
    reference = dict(tiny_model("nemotron_h_moe").named_parameters())
    experts = "model.layers.1.mixer.experts.{}"
    _, factory = canonical(path)
    for rank in (1, 2):
        gm, plan = shard(path, 4, rank=rank, detect=GRID)
        assert [split.describe(rank) for split in plan.experts][0].startswith("ep x tp")
        factory.load_or_random_init(gm, "cpu")
        start, inter = 2 * (rank // 2), slice(16 * (rank % 2), 16 * (rank % 2) + 16)
        up = reference[experts.format("up_proj")][start : start + 2, inter]
        down = reference[experts.format("down_proj")][start : start + 2, :, inter]
        local_up = gm.get_parameter(experts.format("up_proj"))
        torch.testing.assert_close(local_up, up, rtol=0, atol=0)
        local_down = gm.get_parameter(experts.format("down_proj"))
        torch.testing.assert_close(local_down, down, rtol=0, atol=0)
