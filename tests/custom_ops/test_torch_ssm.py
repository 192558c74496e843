"""The reference Mamba-2 ops against transformers' own torch code, and the cached ops against
the uncached ones: mixed batches, chunked prefill carrying state, decode from a slot."""

from __future__ import annotations

import pytest
import torch
from transformers.models.mamba2 import modeling_mamba2 as hf

import autodeploy.custom_ops  # noqa: F401  (registers the ops)
from autodeploy.custom_ops.mamba.ssm_math import chunked_scan, discretize_dt, recurrent_step

ad = torch.ops.auto_deploy
HEADS, HEAD_DIM, GROUPS, STATE, CHUNK = 4, 8, 2, 16, 8
CHANNELS, KERNEL = 12, 4
NO_LIMIT = [0.0, float("inf")]


def ssm_inputs(batch: int, seq_len: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, seq_len, HEADS, HEAD_DIM, generator=g),
        A=-torch.rand(HEADS, generator=g) * 2,
        B=torch.randn(batch, seq_len, GROUPS, STATE, generator=g),
        C=torch.randn(batch, seq_len, GROUPS, STATE, generator=g),
        D=torch.randn(HEADS, generator=g),
        dt=torch.randn(batch, seq_len, HEADS, generator=g),
        dt_bias=torch.randn(HEADS, generator=g),
    )


@pytest.mark.parametrize("seq_len", [1, 7, 8, 21])
def test_torch_ssm_matches_transformers_chunk_scan(seq_len):
    a = ssm_inputs(2, seq_len)
    expected = hf.mamba2_chunk_scan(
        a["hidden_states"], a["dt"], a["A"], a["B"], a["C"], chunk_size=CHUNK, D=a["D"],
        dt_bias=a["dt_bias"], dt_softplus=True, dt_limit=(0.0, float("inf")),
    )  # fmt: skip
    got = ad.torch_ssm(*a.values(), NO_LIMIT, CHUNK)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_time_step_limit_clamps_the_step():
    a = ssm_inputs(1, 5)
    limit = [0.5, 0.6]
    expected = hf.mamba2_chunk_scan(
        a["hidden_states"], a["dt"], a["A"], a["B"], a["C"], chunk_size=CHUNK, D=a["D"],
        dt_bias=a["dt_bias"], dt_softplus=True, dt_limit=tuple(limit),
    )  # fmt: skip
    got = ad.torch_ssm(*a.values(), limit, CHUNK)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, ad.torch_ssm(*a.values(), NO_LIMIT, CHUNK), atol=1e-3)


def test_recurrent_step_matches_transformers_state_update_and_the_scan():
    a = ssm_inputs(2, 13)
    step = discretize_dt(a["dt"], a["dt_bias"], NO_LIMIT)
    y_scan, final = chunked_scan(a["hidden_states"], step, a["A"], a["B"], a["C"], 5)
    state = torch.zeros(2, HEADS, HEAD_DIM, STATE)
    hf_state = state.clone()
    for t in range(13):
        y, state = recurrent_step(
            state, a["hidden_states"][:, t], step[:, t], a["A"], a["B"][:, t], a["C"][:, t]
        )
        torch.testing.assert_close(y, y_scan[:, t], atol=1e-4, rtol=1e-4)
        hf_y = hf.mamba2_selective_state_update(
            hf_state, a["hidden_states"][:, t], step[:, t, :, None].expand(-1, -1, HEAD_DIM),
            a["A"][:, None, None].expand(-1, HEAD_DIM, STATE), a["B"][:, t], a["C"][:, t],
        )  # fmt: skip
        torch.testing.assert_close(y, hf_y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state, final, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("activation", [None, "silu"])
def test_torch_causal_conv1d_matches_a_padded_conv(activation):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, CHANNELS, generator=g)
    weight, bias = torch.randn(CHANNELS, 1, KERNEL, generator=g), torch.randn(CHANNELS, generator=g)
    expected = hf.causal_conv1d_fn(x.transpose(1, 2), weight[:, 0], bias, activation=activation)
    got = ad.torch_causal_conv1d(x, weight, bias, activation)
    torch.testing.assert_close(got, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="'gelu' is not supported"):
        ad.torch_causal_conv1d(x, weight, bias, "gelu")


# ---------------------------------------------------------------------- cached ops


class PackedBatch:
    """Packs (tokens, input_pos, slot) per sequence, prefill first, like SequenceInfo does."""

    def __init__(self, seqs: list[tuple[int, int, int]]):
        self.lengths = [n for n, _, _ in seqs]
        num_prefill = sum(1 for n, pos, _ in seqs if not (n == 1 and pos > 0))
        num_prefill_tokens = sum(self.lengths[:num_prefill])
        self.batch_info = torch.tensor([num_prefill, num_prefill_tokens, len(seqs) - num_prefill])
        self.cu_seqlen = torch.tensor([0, *torch.tensor(self.lengths).cumsum(0).tolist()])
        self.input_pos = torch.tensor([pos for _, pos, _ in seqs], dtype=torch.int32)
        self.slot_idx = torch.tensor([slot for _, _, slot in seqs])

    @property
    def metadata(self) -> tuple:
        return self.batch_info, self.cu_seqlen, self.input_pos, self.slot_idx


def pack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[1, s_i, ...] per sequence -> [1, total, ...]."""
    return torch.cat(tensors, dim=1)


def test_cached_ssm_mixed_batch_chunked_prefill_and_decode_match_the_full_scan():
    """Three sequences of 11, 6 and 9 tokens, each run as: a prefill chunk, then the rest in
    later steps mixed with other sequences' decodes; outputs equal torch_ssm over the whole
    sequence and the slots hold each sequence's state."""
    lengths, slots = [11, 6, 9], [2, 0, 3]
    full = [ssm_inputs(1, n, seed=i) for i, n in enumerate(lengths)]
    for seq in full[1:]:  # A, D, dt_bias are layer weights: shared
        seq.update(A=full[0]["A"], D=full[0]["D"], dt_bias=full[0]["dt_bias"])
    expected = [ad.torch_ssm(*a.values(), NO_LIMIT, CHUNK) for a in full]
    state = torch.randn(5, HEADS, HEAD_DIM, STATE)  # garbage: prefill from 0 must ignore it
    done = [0, 0, 0]
    got: list[list[torch.Tensor]] = [[], [], []]
    # steps: (sequence, new tokens) in packed order (prefill first)
    steps = [[(0, 5), (1, 6)], [(0, 4), (2, 3), (1, 0)], [(2, 6), (0, 1)], [(0, 1)]]
    for step in steps:
        entries = [(i, n) for i, n in step if n > 0]
        batch = PackedBatch([(n, done[i], slots[i]) for i, n in entries])
        args = [
            pack([full[i][k][:, done[i] : done[i] + n] for i, n in entries])
            if k not in ("A", "D", "dt_bias")  # layer weights, shared by the sequences
            else full[0][k]
            for k in full[0]
        ]
        y = ad.torch_cached_ssm(*args, *batch.metadata, state, NO_LIMIT, CHUNK)
        for (i, n), out in zip(entries, y.split([n for _, n in entries], dim=1)):
            got[i].append(out)
            done[i] += n
    for i in range(3):
        torch.testing.assert_close(torch.cat(got[i], 1), expected[i], atol=1e-4, rtol=1e-4)


def test_cached_ssm_decode_only_batch_uses_each_slot():
    a = ssm_inputs(3, 1)
    state = torch.randn(4, HEADS, HEAD_DIM, STATE)
    before = state.clone()
    batch = PackedBatch([(1, 5, 3), (1, 2, 1), (1, 7, 0)])
    y = ad.torch_cached_ssm(*a.values(), *batch.metadata, state, NO_LIMIT, CHUNK)
    step = discretize_dt(a["dt"][:, 0], a["dt_bias"], NO_LIMIT)
    y_ref, new = recurrent_step(
        before[[3, 1, 0]], a["hidden_states"][:, 0], step, a["A"], a["B"][:, 0], a["C"][:, 0]
    )
    y_ref = y_ref + a["hidden_states"][:, 0] * a["D"][:, None]
    torch.testing.assert_close(y[:, 0], y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state[[3, 1, 0]], new)
    torch.testing.assert_close(state[2], before[2])  # untouched slot


def test_cached_ssm_bf16_state_cache():
    a = ssm_inputs(1, 6)
    state = torch.zeros(2, HEADS, HEAD_DIM, STATE, dtype=torch.bfloat16)
    batch = PackedBatch([(6, 0, 1)])
    y = ad.torch_cached_ssm(*a.values(), *batch.metadata, state, NO_LIMIT, CHUNK)
    torch.testing.assert_close(y, ad.torch_ssm(*a.values(), NO_LIMIT, CHUNK))
    step = discretize_dt(a["dt"], a["dt_bias"], NO_LIMIT)
    _, final = chunked_scan(a["hidden_states"], step, a["A"], a["B"], a["C"], CHUNK)
    torch.testing.assert_close(state[1].float(), final[0], atol=2e-2, rtol=2e-2)


def test_cached_conv_chunked_prefill_and_decode_match_the_full_conv():
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(CHANNELS, 1, KERNEL, generator=g), torch.randn(CHANNELS, generator=g)
    seqs = [torch.randn(1, n, CHANNELS, generator=g) for n in (7, 2)]
    expected = [ad.torch_causal_conv1d(x, weight, bias, "silu") for x in seqs]
    state = torch.randn(3, CHANNELS, KERNEL - 1)  # garbage before the first prefill
    slots, done, got = [1, 2], [0, 0], [[], []]
    for step in [[(0, 2), (1, 1)], [(0, 3), (1, 1)], [(0, 1)], [(0, 1)]]:
        batch = PackedBatch([(n, done[i], slots[i]) for i, n in step])
        x = pack([seqs[i][:, done[i] : done[i] + n] for i, n in step])
        y = ad.torch_cached_causal_conv1d(x, weight, bias, *batch.metadata, state, "silu")
        for (i, n), out in zip(step, y.split([n for _, n in step], dim=1)):
            got[i].append(out)
            done[i] += n
    for i in range(2):
        torch.testing.assert_close(torch.cat(got[i], 1), expected[i], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state[1], seqs[0][0, -(KERNEL - 1) :].t())
