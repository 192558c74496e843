"""eliminate_redundant_transposes: only pairs that undo each other go."""

import torch
from matcher_helpers import aten, check_rewrite


class Transposes(torch.nn.Module):
    def forward(self, x):
        undone = x.transpose(1, 2).contiguous().transpose(2, 1)  # cancels (dims in any order)
        negative = x.transpose(-3, -2).transpose(1, 2)  # the same dims, written differently
        kept = x.transpose(1, 2).transpose(2, 3)  # a rotation, not an identity
        return undone + negative * 2 + kept.reshape(x.shape) * 3


def test_cancelling_pairs_are_removed_others_kept():
    gm, info = check_rewrite(
        Transposes(),
        "eliminate_redundant_transposes",
        dict(x=torch.randn(2, 3, 4, 4)),
        expect_before={aten.transpose: 6},
        expect_after={aten.transpose: 2},
    )
    assert info.num_matches == 2


class FusedQKV(torch.nn.Module):
    """GPT-NeoX: transpose, chunk along head_dim, transpose each part back."""

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = x.view(b, s, 4, 24).transpose(1, 2).chunk(3, dim=-1)
        return q.transpose(1, 2) * k.transpose(1, 2) + v.transpose(1, 2)


class ChunkAlongSwappedDim(torch.nn.Module):
    def forward(self, x):
        first, second = x.transpose(1, 2).chunk(2, dim=1)  # dim 1 is one of the swapped dims
        return first.transpose(1, 2) + second.transpose(1, 2)


def test_transposes_around_a_chunk_on_another_dim_cancel():
    gm, info = check_rewrite(
        FusedQKV(),
        "eliminate_redundant_transposes",
        dict(x=torch.randn(2, 5, 96)),
        expect_before={aten.transpose: 4},
        expect_after={aten.transpose: 0, aten.chunk: 1},
    )
    assert info.num_matches == 3
    check_rewrite(
        ChunkAlongSwappedDim(),
        "eliminate_redundant_transposes",
        dict(x=torch.randn(2, 4, 6)),
        expect_before={aten.transpose: 3},
        expect_after={aten.transpose: 3},
    )
