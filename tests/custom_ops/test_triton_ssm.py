"""Triton ``ssm`` / ``causal_conv`` kernels against the torch reference cached ops.

CPU cases run in the Triton interpreter (tiny shapes): a mixed step (a new prefill, a chunked
prefill continuation and decodes in one launch) and a decode-only step, comparing outputs and
the slots' states. GPU cases (``gpu``) use bf16 inputs and a realistic head count.
"""

from __future__ import annotations

import pytest
import torch
from test_torch_ssm import CHANNELS, KERNEL, NO_LIMIT, PackedBatch, ssm_inputs

pytest.importorskip("triton")

import autodeploy.custom_ops.mamba.triton_backend  # noqa: E402,F401

ad = torch.ops.auto_deploy
STEPS = {  # (tokens, input_pos, slot) per sequence, prefill first
    "mixed": [(7, 0, 2), (5, 9, 0), (1, 4, 3), (1, 12, 1)],
    "decode_only": [(1, 3, 1), (1, 8, 0), (1, 1, 4)],  # slot 4: the spare (padding) slot
}


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _ssm_case(step: str, device: str, dtype: torch.dtype, limit: list[float]):
    seqs = STEPS[step]
    a = ssm_inputs(1, sum(n for n, _, _ in seqs))
    a = {k: v.to(device, dtype) if k in ("hidden_states", "B", "C", "dt") else v.to(device)
         for k, v in a.items()}  # fmt: skip
    batch = PackedBatch(seqs)
    meta = [t.to(device) if i else t for i, t in enumerate(batch.metadata)]
    state = torch.randn(5, *ssm_inputs(1, 1)["hidden_states"].shape[2:], 16, device=device)
    return a, meta, state, limit


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("limit", [NO_LIMIT, [0.3, 0.9]])
def test_triton_ssm_matches_the_reference(interpreter, step, limit):
    a, meta, state, limit = _ssm_case(step, "cpu", torch.float32, limit)
    ref_state, tri_state = state.clone(), state.clone()
    expected = ad.torch_cached_ssm(*a.values(), *meta, ref_state, limit, 8)
    got = ad.triton_cached_ssm(*a.values(), *meta, tri_state, limit, 8)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    used = meta[3].tolist()
    torch.testing.assert_close(tri_state[used], ref_state[used], atol=1e-4, rtol=1e-4)


def _conv_case(step: str, device: str, dtype: torch.dtype, channels: int = CHANNELS):
    g = torch.Generator().manual_seed(0)
    seqs = STEPS[step]
    x = torch.randn(1, sum(n for n, _, _ in seqs), channels, generator=g).to(device, dtype)
    weight = torch.randn(channels, 1, KERNEL, generator=g).to(device, dtype)
    bias = torch.randn(channels, generator=g).to(device, dtype)
    state = torch.randn(5, channels, KERNEL - 1, generator=g).to(device, dtype)
    meta = [t.to(device) if i else t for i, t in enumerate(PackedBatch(seqs).metadata)]
    return x, weight, bias, meta, state


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("activation", [None, "silu"])
def test_triton_causal_conv_matches_the_reference(interpreter, step, activation):
    x, weight, bias, meta, state = _conv_case(step, "cpu", torch.float32)
    ref_state, tri_state = state.clone(), state.clone()
    expected = ad.torch_cached_causal_conv1d(x, weight, bias, *meta, ref_state, activation)
    got = ad.triton_cached_causal_conv1d(x, weight, bias, *meta, tri_state, activation)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    used = meta[3].tolist()
    torch.testing.assert_close(tri_state[used], ref_state[used])


def test_triton_causal_conv_without_bias(interpreter):
    x, weight, _, meta, state = _conv_case("mixed", "cpu", torch.float32)
    expected = ad.torch_cached_causal_conv1d(x, weight, None, *meta, state.clone(), "silu")
    got = ad.triton_cached_causal_conv1d(x, weight, None, *meta, state.clone(), "silu")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("step", list(STEPS))
def test_triton_state_kernels_on_gpu_bf16(step):
    a, meta, state, limit = _ssm_case(step, "cuda", torch.bfloat16, NO_LIMIT)
    ref_state, tri_state = state.clone(), state.clone()
    expected = ad.torch_cached_ssm(*a.values(), *meta, ref_state, limit, 8)
    got = ad.triton_cached_ssm(*a.values(), *meta, tri_state, limit, 8)
    torch.testing.assert_close(got.float(), expected.float(), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(tri_state, ref_state, atol=1e-3, rtol=1e-3)
    x, weight, bias, meta, state = _conv_case(step, "cuda", torch.bfloat16, channels=384)
    ref_state, tri_state = state.clone(), state.clone()
    expected = ad.torch_cached_causal_conv1d(x, weight, bias, *meta, ref_state, "silu")
    got = ad.triton_cached_causal_conv1d(x, weight, bias, *meta, tri_state, "silu")
    torch.testing.assert_close(got.float(), expected.float(), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(tri_state, ref_state)
