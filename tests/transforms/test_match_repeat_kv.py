"""match_repeat_kv: HF repeat_kv (and repeat_interleave) become torch_attention_repeat_kv."""

import pytest
import torch
from matcher_helpers import ad, aten, check_rewrite


def hf_repeat_kv(hidden_states, n_rep):  # as in transformers' modeling files
    batch, num_kv_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(
        batch, num_kv_heads, n_rep, slen, head_dim
    )
    return hidden_states.reshape(batch, num_kv_heads * n_rep, slen, head_dim)


class RepeatKV(torch.nn.Module):
    def __init__(self, n_rep, interleave=False):
        super().__init__()
        self.n_rep, self.interleave = n_rep, interleave

    def forward(self, key, value):
        if self.interleave:
            k, v = (torch.repeat_interleave(t, self.n_rep, dim=1) for t in (key, value))
        else:
            k, v = hf_repeat_kv(key, self.n_rep), hf_repeat_kv(value, self.n_rep)
        return k * 2.0 + v


@pytest.mark.parametrize("n_rep", [2, 4])
@pytest.mark.parametrize("interleave", [False, True])
def test_repeats_become_one_op_with_n_rep(n_rep, interleave):
    kv = dict(key=torch.randn(2, 2, 5, 16), value=torch.randn(2, 2, 5, 16))
    gm, info = check_rewrite(
        RepeatKV(n_rep, interleave),
        "match_repeat_kv",
        kv,
        expect_before={ad.torch_attention_repeat_kv: 0},
        expect_after={ad.torch_attention_repeat_kv: 2, aten.expand: 0, aten.repeat_interleave: 0},
    )
    assert info.num_matches == 2
    ops = [n for n in gm.graph.nodes if n.target == ad.torch_attention_repeat_kv.default]
    assert all(n.args[1] == n_rep for n in ops)


class ExpandBatch(torch.nn.Module):
    def forward(self, key):  # a repeat over dim 0, not the heads
        b, n, s, d = key.shape
        return key[None].expand(2, b, n, s, d).reshape(2 * b, n, s, d)


def test_a_repeat_over_another_dim_is_left_alone():
    check_rewrite(
        ExpandBatch(),
        "match_repeat_kv",
        dict(key=torch.randn(2, 2, 3, 8)),
        expect_before={aten.expand: 1},
        expect_after={ad.torch_attention_repeat_kv: 0},
    )
