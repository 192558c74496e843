"""``triton_moe_fused`` against the reference ``torch_moe``: top_k 1 and 2, experts without
tokens, a single token, uneven routing, float16; the expert sort's block layout. CPU cases run
in the Triton interpreter at tiny shapes; ``gpu`` cases use bf16 at a realistic shape."""

import pytest
import torch
from test_torch_moe import expert_parallel_sum, moe_inputs

pytest.importorskip("triton")

from autodeploy.custom_ops.moe.backends import triton_moe_input_problem  # noqa: E402
from autodeploy.custom_ops.moe.triton_backend import (  # noqa: E402
    BLOCK_M,
    sort_by_expert,
    triton_moe_fused,
)

ad = torch.ops.auto_deploy


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _check(args, activation="silu", tol=2e-5):
    out = triton_moe_fused(*args, activation)
    ref = ad.torch_moe(*args, activation)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("top_k", [1, 2])
def test_kernel_matches_reference(interpreter, top_k):
    _check(moe_inputs(7, 40, 24, 5, top_k))


def test_experts_without_tokens_and_uneven_routing(interpreter):
    x, selected, weights, gate_up, down = moe_inputs(20, 32, 16, 6, 2, seed=3)
    selected[:, 0] = 4  # expert 4 gets every token (more than one row block)
    selected[:, 1] = torch.where(torch.arange(20) < 2, 1, 5)  # expert 1: 2 tokens; 0, 2, 3: none
    _check((x, selected, weights, gate_up, down))


def test_one_token(interpreter):
    _check(moe_inputs(1, 32, 16, 4, 2, seed=4))


def test_gelu_and_float16(interpreter):
    _check(moe_inputs(6, 32, 16, 4, 2, seed=5), activation="gelu")
    _check(moe_inputs(6, 32, 16, 4, 2, seed=6, dtype=torch.float16), tol=2e-3)


def test_ids_outside_the_local_experts_contribute_nothing(interpreter):
    args = moe_inputs(20, 32, 16, 4, 2, seed=8)
    x, selected, weights, gate_up, down = args
    assert not triton_moe_fused(x, selected + 4, weights, gate_up, down, "silu").any()
    full = ad.torch_moe(*args, "silu")
    for num_slices in (2, 4):
        summed = expert_parallel_sum(triton_moe_fused, args, num_slices)
        torch.testing.assert_close(summed, full, atol=2e-5, rtol=2e-5)


def test_sort_skips_pairs_of_other_ranks_experts():
    selected = torch.tensor([[2, -1], [5, 1], [2, 7]])  # -1, 5, 7: not among experts 0..3
    pair_ids, block_expert = sort_by_expert(selected, num_experts=4)
    assert block_expert[block_expert >= 0].tolist() == [1, 2]
    kept = sorted(pair_ids[pair_ids < 6].tolist())
    assert kept == [0, 3, 4]  # the pairs of experts 2, 1, 2


def test_sort_groups_pairs_by_expert_in_padded_blocks():
    selected = torch.tensor([[2, 0], [2, 1], [2, 0]])
    pair_ids, block_expert = sort_by_expert(selected, num_experts=4)
    used = block_expert[block_expert >= 0].tolist()
    assert used == [0, 1, 2]  # expert 3 has no pairs: no block
    blocks = pair_ids.view(-1, BLOCK_M)
    real = [row[row < 6].tolist() for row in blocks[: len(used)]]
    assert real == [[1, 5], [3], [0, 2, 4]]  # pairs p = token * top_k + slot
    assert (blocks[len(used) :] == 6).all()  # unused blocks hold only padding


def test_unsupported_inputs_are_named():
    x = torch.zeros(2, 8, dtype=torch.float64)
    assert "dtype" in triton_moe_input_problem(x, "silu")
    assert "relu" in triton_moe_input_problem(x.float(), "relu")
    assert "ungated" in triton_moe_input_problem(x.float(), "silu", gated=False)


@pytest.mark.gpu
@pytest.mark.parametrize("top_k", [1, 2, 8])
def test_kernel_matches_reference_on_gpu(top_k):
    args = moe_inputs(300, 512, 256, 16, top_k, dtype=torch.bfloat16, device="cuda")
    out = triton_moe_fused(*args, "silu")
    ref = ad.torch_moe(*[a.float() if a.is_floating_point() else a for a in args], "silu")
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
