"""Triton RoPE (``triton_rope_with_explicit_cos_sin``, ``triton_rope_with_cos_sin_cache``)
against the reference ops ``torch_rope_with_explicit_cos_sin`` / ``torch_rope_with_cos_sin_cache``.

CPU cases run in the Triton interpreter (each test sets ``TRITON_INTERPRET=1``; the ops launch an
interpreted copy for CPU tensors whatever the environment was when triton was imported). GPU
cases (``@pytest.mark.gpu``) use realistic shapes and bfloat16.
"""

import pytest
import torch

pytest.importorskip("triton")

from autodeploy.custom_ops.rope.torch_cos_sin_cache_backend import (  # noqa: E402
    torch_rope_with_cos_sin_cache,
)
from autodeploy.custom_ops.rope.triton_backend import (  # noqa: E402
    triton_rope_with_cos_sin_cache,
    triton_rope_with_explicit_cos_sin,
)

ad = torch.ops.auto_deploy
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _hf_tables(num_positions, rotary_dim, base=10000.0):
    """cos/sin tables the way HF Llama builds them (the two halves repeat the frequencies)."""
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    freqs = torch.arange(num_positions).float()[:, None] * inv_freq  # [P, r/2]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos(), emb.sin()


def _qk(batch, seq, q_heads, k_heads, head_dim, dtype, layout, device="cpu", fused=False):
    """q/k in "bsnd" (unsqueeze_dim 2) or "bnsd" (1); ``fused``: slices of one QKV tensor."""
    gen = torch.Generator().manual_seed(0)
    if fused:  # [b, s, (nq + 2 nk) d] as a fused GEMM writes it; q/k are strided views
        qkv = torch.randn(batch, seq, (q_heads + 2 * k_heads) * head_dim, generator=gen)
        qkv = qkv.to(device, dtype)
        q = qkv[..., : q_heads * head_dim].view(batch, seq, q_heads, head_dim)
        k = qkv[..., q_heads * head_dim : (q_heads + k_heads) * head_dim]
        k = k.view(batch, seq, k_heads, head_dim)
    else:
        q = torch.randn(batch, seq, q_heads, head_dim, generator=gen).to(device, dtype)
        k = torch.randn(batch, seq, k_heads, head_dim, generator=gen).to(device, dtype)
    if layout == 1:
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    return q, k


def _close(actual, expected):
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        tol = TOLERANCE[a.dtype]
        torch.testing.assert_close(a.float(), e.float(), atol=tol, rtol=tol)


def _check(
    batch, seq, q_heads, k_heads, head_dim, rotary_dim, dtype, layout, device="cpu", fused=False
):
    q, k = _qk(batch, seq, q_heads, k_heads, head_dim, dtype, layout, device, fused)
    num_positions = 40
    cos_table, sin_table = (t.to(device, dtype) for t in _hf_tables(num_positions, rotary_dim))
    positions = torch.randint(
        0, num_positions, (batch, seq), generator=torch.Generator().manual_seed(1)
    ).to(device)
    expected = torch_rope_with_cos_sin_cache(q, k, positions, cos_table, sin_table, layout)
    _close(triton_rope_with_cos_sin_cache(q, k, positions, cos_table, sin_table, layout), expected)
    cos, sin = cos_table[positions], sin_table[positions]  # [b, s, r]
    _close(
        triton_rope_with_explicit_cos_sin(q, k, cos, sin, layout),
        ad.torch_rope_with_explicit_cos_sin(q, k, cos, sin, layout),
    )


@pytest.mark.parametrize(
    "dtype, layout, head_dim, rotary_dim",
    [
        (torch.float32, 2, 16, 16),
        (torch.float16, 1, 16, 8),
        (torch.float32, 1, 12, 6),
        (torch.float16, 2, 12, 6),
    ],
    ids=["fp32-bsnd-full", "fp16-bnsd-partial", "fp32-bnsd-odd_sizes", "fp16-bsnd-odd_sizes"],
)
def test_cpu_interpreter_matches_reference(interpreter, dtype, layout, head_dim, rotary_dim):
    _check(2, 2, 4, 2, head_dim, rotary_dim, dtype, layout)


def test_cpu_fused_qkv_views(interpreter):
    _check(1, 3, 4, 2, 16, 16, torch.float32, 2, fused=True)


def test_cpu_broadcast_cos_sin_and_one_tensor_as_q_and_k(interpreter):
    q, _ = _qk(2, 3, 2, 2, 8, torch.float32, 2)
    cos_table, sin_table = _hf_tables(3, 8)
    cos, sin = cos_table[None], sin_table[None]  # [1, s, r], shared by the batch
    _close(
        triton_rope_with_explicit_cos_sin(q, q, cos, sin, 2),
        ad.torch_rope_with_explicit_cos_sin(q, q, cos, sin, 2),
    )


def test_cpu_rotation_keeps_the_norm_and_position_zero_is_identity(interpreter):
    """Independent of the reference: RoPE rotates pairs, so norms stay; cos=1, sin=0 at 0."""
    q, k = _qk(1, 3, 2, 1, 16, torch.float32, 2)
    cos_table, sin_table = _hf_tables(10, 16)
    positions = torch.tensor([[0, 4, 9]])
    q2, k2 = triton_rope_with_cos_sin_cache(q, k, positions, cos_table, sin_table, 2)
    torch.testing.assert_close(q2[:, 0], q[:, 0])
    torch.testing.assert_close(q2.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(k2.norm(dim=-1), k.norm(dim=-1))


@pytest.mark.parametrize(
    "head_dim, rotary_dim, message",
    [(16, 7, "must be even"), (8, 16, "must be even and <= head_dim")],
)
def test_rejects_bad_rotary_widths(interpreter, head_dim, rotary_dim, message):
    q, k = _qk(1, 2, 2, 2, head_dim, torch.float32, 2)
    cos = torch.ones(1, 2, rotary_dim)
    with pytest.raises(ValueError, match=message):
        triton_rope_with_explicit_cos_sin(q, k, cos, cos, 2)


def test_rejects_3d_inputs(interpreter):
    q = torch.zeros(2, 3, 8)
    with pytest.raises(ValueError, match="4-D"):
        triton_rope_with_explicit_cos_sin(q, q, torch.ones(2, 3, 8), torch.ones(2, 3, 8), 2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    "batch, seq, q_heads, k_heads, head_dim, rotary_dim",
    [
        (1, 1, 32, 8, 128, 128),
        (16, 1, 32, 8, 128, 128),
        (1, 300, 32, 8, 128, 128),
        (4, 17, 24, 8, 64, 32),
        (2, 33, 40, 40, 96, 96),
    ],
)
@pytest.mark.parametrize("fused", [False, True])
def test_gpu_matches_reference(dtype, batch, seq, q_heads, k_heads, head_dim, rotary_dim, fused):
    _check(batch, seq, q_heads, k_heads, head_dim, rotary_dim, dtype, 2, "cuda", fused)


@pytest.mark.gpu
def test_gpu_bnsd_layout():
    _check(2, 9, 32, 8, 128, 64, torch.bfloat16, 1, "cuda")
