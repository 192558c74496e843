"""sharding_transform_executor: local weights, rewritten sizes, collectives, load-time slicing.

Numbers across real ranks are checked in tests/distributed (greedy tokens vs Hugging Face).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from sharding_helpers import canonical, count_collectives, param_bytes, shard, tiny_dir

from autodeploy.models.checkpoint import load_checkpoint
from autodeploy.models.sliced_loading import read_safetensors_sliced
from autodeploy.transforms.library.sharding._heuristic import op_name


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return {arch: tiny_dir(tmp_path_factory, arch) for arch in ("llama", "phi3", "gpt_neox")}


def weight(gm, name):
    return gm.get_parameter(name)


def test_llama_local_shapes_and_collectives(dirs):
    gm, plan = shard(dirs["llama"], 2, rank=1)
    assert count_collectives(gm) == (4, 1)  # o_proj + down_proj per layer; the LM head gather
    layer = "model.layers.0."
    assert weight(gm, layer + "self_attn.q_proj.weight").shape == (32, 64)
    assert weight(gm, layer + "self_attn.k_proj.weight").shape == (16, 64)
    assert weight(gm, layer + "self_attn.o_proj.weight").shape == (64, 32)
    assert weight(gm, layer + "mlp.down_proj.weight").shape == (64, 64)
    assert weight(gm, "lm_head.weight").shape == (128, 64)
    assert weight(gm, layer + "input_layernorm.weight").shape == (64,)  # norms replicated


def test_weight_bytes_per_rank_are_the_expected_share(dirs):
    full, _ = canonical(dirs["llama"])
    for world in (2, 4):
        gm, plan = shard(
            dirs["llama"], world, rank=world - 1, detect={"sharding_source": ["heuristic"]}
        )
        split_bytes = sum(
            full.get_parameter(s.weight).numel() * full.get_parameter(s.weight).element_size()
            for s in plan.splits
        )
        replicated_kv = 0
        if world == 4:  # 2 KV heads over 4 ranks: each rank holds one whole KV head (of two)
            kv = [s for s in plan.splits if s.module.endswith(("k_proj", "v_proj"))]
            replicated_kv = sum(
                16 * 64 * 4 for _ in kv
            )  # half of a 32x64 fp32 weight, not a quarter
            replicated_kv -= sum(32 * 64 * 4 // 4 for _ in kv)
        expected = param_bytes(full) - split_bytes + split_bytes // world + replicated_kv
        assert param_bytes(gm) == expected


def test_phi3_fused_qkv_slices_rewritten(dirs):
    gm, plan = shard(dirs["phi3"], 2, rank=1)
    qkv = next(s for s in plan.splits if s.module == "model.layers.0.self_attn.qkv_proj")
    # rank 1 keeps q heads 2,3 (rows 32..63), KV head 1 of k (80..95) and of v (112..127)
    assert qkv.indices(1) == [*range(32, 64), *range(80, 96), *range(112, 128)]
    linear = next(n for n in gm.graph.nodes if n.name == qkv.node)
    bounds = sorted((n.args[2], n.args[3]) for n in linear.users if op_name(n) == "slice")
    assert bounds == [(0, 32), (32, 48), (48, 2**63 - 1)]
    gate_up = next(s for s in plan.splits if s.module == "model.layers.0.mlp.gate_up_proj")
    assert gate_up.indices(0) == [*range(0, 64), *range(128, 192)]  # gate half, up half


def test_gpt_neox_interleaved_heads_stay_whole(dirs):
    gm, plan = shard(dirs["gpt_neox"], 2, rank=1, detect={"sharding_source": ["heuristic"]})
    qkv = next(s for s in plan.splits if s.module.endswith("0.attention.query_key_value"))
    assert qkv.indices(1) == list(range(96, 192))  # heads 2,3 with their q, k, v rows
    assert weight(gm, "gpt_neox.layers.0.attention.query_key_value.bias").shape == (96,)
    dense = next(n for n in gm.graph.nodes if n.name == plan.splits[1].node)
    (reduced,) = dense.users  # bias added once, after the all-reduce
    assert op_name(reduced) == "torch_dist_all_reduce"
    assert [op_name(u) for u in reduced.users] == ["add"]


def test_checkpoint_loads_into_local_slices(dirs):
    gm, plan = shard(dirs["llama"], 2, rank=1)
    gm.to_empty(device="cpu")
    files = [dirs["llama"] / "model.safetensors"]
    full = load_file(str(files[0]))
    load_checkpoint(gm, files)
    for split in plan.splits:
        expected = full[split.weight].index_select(split.dim, torch.tensor(split.indices(1)))
        torch.testing.assert_close(gm.get_parameter(split.weight), expected, rtol=0, atol=0)
    # The hook also slices a full tensor handed to load_state_dict directly.
    key = "model.layers.1.mlp.up_proj.weight"
    gm.load_state_dict({key: full[key]}, strict=False)
    torch.testing.assert_close(gm.get_parameter(key), full[key][64:], rtol=0, atol=0)


def test_safetensors_read_sliced_by_rows_and_columns(dirs):
    path = dirs["llama"] / "model.safetensors"
    full = load_file(str(path))
    slices = {
        "lm_head.weight": (0, [4, 5, 6, 200, 201], (256, 64)),
        "model.layers.0.self_attn.o_proj.weight": (1, list(range(32, 64)), (64, 64)),
    }
    read = read_safetensors_sliced(path, slices)
    torch.testing.assert_close(read["lm_head.weight"], full["lm_head.weight"][[4, 5, 6, 200, 201]])
    torch.testing.assert_close(
        read["model.layers.0.self_attn.o_proj.weight"],
        full["model.layers.0.self_attn.o_proj.weight"][:, 32:],
    )
    assert read["model.norm.weight"].shape == (64,)


def test_split_lm_head_is_still_found_by_gather_logits(dirs):
    from autodeploy.transforms.library.post_load_fusion.gather_logits_before_lm_head import (
        find_lm_head,
    )

    gm, plan = shard(dirs["llama"], 2)
    head = find_lm_head(gm)
    assert head is not None and head.name == next(
        s.node for s in plan.splits if s.module == "lm_head"
    )
