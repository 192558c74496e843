"""``torch_moe`` (the reference MoE op) against a per-token loop over the picked experts, and
``torch_moe_grouped`` (the CPU backend) against ``torch_moe``."""

import pytest
import torch
import torch.nn.functional as F

import autodeploy  # noqa: F401  (registers the ops)

ad = torch.ops.auto_deploy


def moe_inputs(tokens, hidden, inter, experts, top_k, seed=0, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=gen)
    scores = torch.randn(tokens, experts, generator=gen)
    weights, selected = torch.topk(scores.softmax(-1), top_k, dim=-1)
    gate_up = torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5
    down = torch.randn(experts, hidden, inter, generator=gen) / inter**0.5
    cast = lambda t: t.to(device, dtype)  # noqa: E731
    return cast(x), selected.to(device), weights.to(device), cast(gate_up), cast(down)


def per_token_loop(x, selected, weights, gate_up, down, act=F.silu):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(selected.shape[1]):
            e = int(selected[t, k])
            gate, up = (gate_up[e] @ x[t]).chunk(2)
            out[t] += weights[t, k] * (down[e] @ (act(gate) * up))
    return out


@pytest.mark.parametrize("top_k", [1, 2])
def test_reference_matches_a_per_token_loop(top_k):
    args = moe_inputs(9, 16, 12, 4, top_k)
    torch.testing.assert_close(ad.torch_moe(*args, "silu"), per_token_loop(*args))


def test_reference_activation_is_used():
    args = moe_inputs(5, 16, 12, 4, 2, seed=1)
    expected = per_token_loop(*args, act=F.gelu)
    torch.testing.assert_close(ad.torch_moe(*args, "gelu"), expected)
    assert not torch.allclose(ad.torch_moe(*args, "silu"), expected)


@pytest.mark.parametrize("top_k", [1, 2])
def test_grouped_backend_matches_reference(top_k):
    x, selected, weights, gate_up, down = moe_inputs(11, 16, 12, 6, top_k, seed=2)
    selected[:, 0] = 3  # uneven routing; experts 0..2 and 5 get few or no tokens
    for args in [
        (x, selected, weights, gate_up, down),
        (x[:1], selected[:1], weights[:1], gate_up, down),
    ]:
        torch.testing.assert_close(ad.torch_moe_grouped(*args, "silu"), ad.torch_moe(*args, "silu"))


def expert_parallel_sum(op, args, num_slices, activation="silu"):
    """Sum of ``op`` over contiguous expert slices fed ``selected - start`` (as EP ranks run)."""
    x, selected, weights, gate_up, down = args
    per_slice = gate_up.shape[0] // num_slices
    total = torch.zeros_like(x)
    for start in range(0, gate_up.shape[0], per_slice):
        local = slice(start, start + per_slice)
        total += op(x, selected - start, weights, gate_up[local], down[local], activation)
    return total


@pytest.mark.parametrize("op", ["torch_moe", "torch_moe_grouped"])
def test_ids_outside_the_local_experts_contribute_nothing(op):
    op = getattr(ad, op)
    args = moe_inputs(9, 16, 12, 4, 2, seed=7)
    x, selected, weights, gate_up, down = args
    assert not op(x, selected + 4, weights, gate_up, down, "silu").any()  # all ids >= E
    assert not op(x, selected - 4, weights, gate_up, down, "silu").any()  # all ids < 0
    torch.testing.assert_close(expert_parallel_sum(op, args, 2), ad.torch_moe(*args, "silu"))
    torch.testing.assert_close(expert_parallel_sum(op, args, 4), per_token_loop(*args))


def test_fake_shapes_under_export():
    """The op exports with a dynamic token dim (its fake keeps [T, H])."""
    from torch.export import Dim

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            _, _, _, gate_up, down = moe_inputs(2, 16, 12, 4, 2)
            self.gate_up, self.down = torch.nn.Parameter(gate_up), torch.nn.Parameter(down)

        def forward(self, x, selected, weights):
            return ad.torch_moe(x, selected, weights, self.gate_up, self.down, "silu")

    x, selected, weights, _, _ = moe_inputs(5, 16, 12, 4, 2)
    tokens = Dim("tokens")
    program = torch.export.export(
        Block(), (x, selected, weights), dynamic_shapes=({0: tokens}, {0: tokens}, {0: tokens})
    )
    out = program.module()(*moe_inputs(3, 16, 12, 4, 2)[:3])
    assert out.shape == (3, 16)


def ungated_inputs(seed=11):
    """Ungated experts (Nemotron-H): the up projection alone, ``[E, I, H]``."""
    x, selected, weights, gate_up, down = moe_inputs(9, 16, 12, 4, 2, seed=seed)
    return x, selected, weights, gate_up[:, 12:], down


def ungated_loop(x, selected, weights, up, down):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(selected.shape[1]):
            e = int(selected[t, k])
            out[t] += weights[t, k] * (down[e] @ F.relu(up[e] @ x[t]).square())
    return out


@pytest.mark.parametrize("op", ["torch_moe", "torch_moe_grouped"])
def test_ungated_experts_match_a_per_token_loop(op):
    """``[E, I, H]`` input weights: expert(x) = down @ relu(up @ x)^2, also split over ranks."""
    op = getattr(ad, op)
    args = ungated_inputs()
    expected = ungated_loop(*args)
    torch.testing.assert_close(op(*args, "relu2"), expected)
    torch.testing.assert_close(expert_parallel_sum(op, args, 2, "relu2"), expected)
    x, selected, weights, up, down = args
    gated = torch.cat([up, up], dim=1)  # relu(u) * u == relu(u)^2: the gated path agrees
    torch.testing.assert_close(op(x, selected, weights, gated, down, "relu"), expected)


def test_weight_shapes_that_are_neither_gated_nor_ungated_are_named():
    from autodeploy.custom_ops.moe.torch_backend import check_moe_args

    x, selected, weights, gate_up, down = moe_inputs(3, 16, 12, 4, 2)
    check_moe_args("torch_moe", x, selected, weights, gate_up[:, 12:], down, "relu2")  # ungated
    with pytest.raises(ValueError, match=r"rows 2 \* intermediate \(gated\) or intermediate"):
        check_moe_args("torch_moe", x, selected, weights, gate_up[:, :20], down, "silu")
