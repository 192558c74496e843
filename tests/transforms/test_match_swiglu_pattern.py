"""match_swiglu_pattern: down(silu(gate(x)) * up(x)) becomes torch_swiglu_mlp."""

import pytest
import torch
import torch.nn as nn
from matcher_helpers import ad, aten, check_rewrite


class GatedMLP(nn.Module):  # the Llama / Qwen / Mistral MLP
    def __init__(self, bias):
        super().__init__()
        self.gate_proj = nn.Linear(16, 24, bias=bias)
        self.up_proj = nn.Linear(16, 24, bias=bias)
        self.down_proj = nn.Linear(24, 16, bias=bias)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class TwoMLPs(nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.first, self.second = GatedMLP(bias), GatedMLP(bias)

    def forward(self, x):
        return self.second(self.first(x) + x)


@pytest.mark.parametrize("bias", [False, True])
def test_gated_mlps_become_one_op_each(bias):
    gm, info = check_rewrite(
        TwoMLPs(bias),
        "match_swiglu_pattern",
        dict(x=torch.randn(2, 3, 16)),
        expect_before={aten.linear: 6},
        expect_after={ad.torch_swiglu_mlp: 2, aten.linear: 0, aten.silu: 0},
    )
    assert info.num_matches == 2
    node = next(n for n in gm.graph.nodes if n.target == ad.torch_swiglu_mlp.default)
    assert (node.args[4] is not None) is bias


class GeluMLP(GatedMLP):
    def forward(self, x):
        return self.down_proj(nn.functional.gelu(self.gate_proj(x)) * self.up_proj(x))


def test_other_activations_are_left_alone():
    check_rewrite(
        GeluMLP(False),
        "match_swiglu_pattern",
        dict(x=torch.randn(2, 16)),
        expect_before={},
        expect_after={ad.torch_swiglu_mlp: 0, aten.linear: 3},
    )
