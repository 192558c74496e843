"""Triton RMSNorm kernels (``triton_rmsnorm``, ``triton_fused_add_rmsnorm``) against their
reference ops ``torch_rmsnorm`` / ``torch_fused_add_rmsnorm``.

CPU cases run the kernel in the Triton interpreter: the ops launch an interpreted copy for CPU
tensors whenever ``TRITON_INTERPRET=1`` is set at call time (each test sets it), whatever the
environment was when triton was imported, so they run in-process in any test order. GPU cases
(``@pytest.mark.gpu``) use realistic shapes and bfloat16.
"""

import pytest
import torch

pytest.importorskip("triton")

from autodeploy.custom_ops.rms_norm.torch_fused_add_backend import (  # noqa: E402
    torch_fused_add_rmsnorm,
)
from autodeploy.custom_ops.rms_norm.triton_backend import (  # noqa: E402
    triton_fused_add_rmsnorm,
    triton_rmsnorm,
)

ad = torch.ops.auto_deploy
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _inputs(shape, dtype, device="cpu", weight_dtype=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 3
    residual = torch.randn(shape, generator=gen)
    weight = torch.rand(shape[-1], generator=gen) + 0.5
    return (
        x.to(device, dtype),
        residual.to(device, dtype),
        weight.to(device, weight_dtype or dtype),
    )


def _close(actual, expected, dtype):
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)


def _check(x, residual, weight, eps=1e-6):
    out = triton_rmsnorm(x, weight, eps)
    assert out.shape == x.shape and out.dtype == x.dtype
    _close(out, ad.torch_rmsnorm(x, weight, eps), x.dtype)
    normed, added = triton_fused_add_rmsnorm(x, residual, weight, eps)
    ref_normed, ref_added = torch_fused_add_rmsnorm(x, residual, weight, eps)
    assert torch.equal(added, ref_added)  # one rounding of the sum, like the eager add
    _close(normed, ref_normed, x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 64), (5, 100), (1, 1, 48)], ids=str)
def test_cpu_interpreter_matches_reference(interpreter, dtype, shape):
    _check(*_inputs(shape, dtype))


def test_cpu_strided_rows_and_fp32_weight(interpreter):
    x, residual, weight = _inputs((3, 4, 96), torch.float16, weight_dtype=torch.float32)
    _check(x[..., 16:80], residual[..., :64], weight[:64])  # rows with a stride of 96


def test_cpu_without_the_interpreter_says_how_to_enable_it(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, _, weight = _inputs((2, 8), torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_rmsnorm(x, weight, 1e-6)


@pytest.mark.parametrize(
    "x, weight, message",
    [
        (torch.zeros(2, 16385), torch.ones(16385), "16385 > 16384"),
        (torch.zeros(2, 8, dtype=torch.float64), torch.ones(8), "float64"),
        (torch.zeros(2, 8), torch.ones(9), r"expected \(8,\)"),
    ],
    ids=["too_wide", "dtype", "weight_shape"],
)
def test_rejects_unsupported_inputs(interpreter, x, weight, message):
    with pytest.raises(ValueError, match=message):
        triton_rmsnorm(x, weight, 1e-6)


def test_fused_rejects_a_residual_of_another_shape(interpreter):
    x, _, weight = _inputs((2, 8), torch.float32)
    with pytest.raises(ValueError, match="residual"):
        triton_fused_add_rmsnorm(x, torch.zeros(1, 8), weight, 1e-6)


def test_fake_outputs_have_the_input_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, weight = torch.empty(3, 5, 64, dtype=torch.bfloat16), torch.empty(64)
        normed, added = ad.triton_fused_add_rmsnorm(x, x, weight, 1e-6)
        assert ad.triton_rmsnorm(x, weight, 1e-6).shape == normed.shape == added.shape == x.shape
        assert normed.dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    "rows, hidden", [(1, 2048), (7, 4096), (300, 5120), (33, 8192), (5, 16384), (64, 3000)]
)
def test_gpu_matches_reference(dtype, rows, hidden):
    _check(*_inputs((rows, hidden), dtype, device="cuda"))


@pytest.mark.gpu
def test_gpu_bf16_with_fp32_weight_and_3d_input():
    _check(*_inputs((4, 9, 4096), torch.bfloat16, device="cuda", weight_dtype=torch.float32))
