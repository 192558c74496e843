"""fuse_add_rms_norm: residual add + RMSNorm -> one fused op (reference or Triton kernel)."""

import pytest
import torch
import torch.nn as nn
from fusion_helpers import (
    ad,
    apply,
    aten,
    hf_logits,
    loaded_graph,
    logits,
    op_counts,
    sample_inputs,
)
from torch.export import Dim

from autodeploy.export import torch_export_to_gm

# Llama: the first norm reads the embedding (no add); the other three layer norms and the final
# norm read a residual sum.
FUSED, PLAIN, RESIDUAL_ADDS = 4, 1, 4


@pytest.mark.parametrize(
    "backend, fused_op",
    [("torch", ad.torch_fused_add_rmsnorm), ("triton", ad.triton_fused_add_rmsnorm)],
)
def test_residual_adds_and_their_norms_fuse(monkeypatch, backend, fused_op):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    gm, hf_model = loaded_graph("llama")
    inputs = sample_inputs(seq=5)
    before = logits(gm, inputs)
    assert op_counts(gm, add=aten.add.Tensor, norm=ad.torch_rmsnorm) == {
        "add": RESIDUAL_ADDS,
        "norm": FUSED + PLAIN,
    }
    gm, info = apply(gm, "fuse_add_rms_norm", backend=backend)
    assert info.num_matches == FUSED
    assert op_counts(gm, add=aten.add.Tensor, norm=ad.torch_rmsnorm, fused=fused_op) == {
        "add": 0,
        "norm": PLAIN,
        "fused": FUSED,
    }
    after = logits(gm, inputs)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, hf_logits(hf_model, inputs), atol=1e-4, rtol=1e-4)


def test_runs_after_fuse_rmsnorm_too(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    gm, _ = loaded_graph("qwen2")
    inputs = sample_inputs(seq=4)
    before = logits(gm, inputs)
    gm, _ = apply(gm, "fuse_rmsnorm", backend="triton")
    gm, info = apply(gm, "fuse_add_rms_norm", backend="triton")
    assert info.num_matches == FUSED
    assert op_counts(gm, norm=ad.triton_rmsnorm, fused=ad.triton_fused_add_rmsnorm) == {
        "norm": PLAIN,
        "fused": FUSED,
    }
    torch.testing.assert_close(logits(gm, inputs), before, atol=1e-5, rtol=1e-5)


class _LateWeight(nn.Module):
    """Gemma's layout: the sum has another user before the norm's weight (``w + 1``) exists."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16) * 0.1)

    def forward(self, x, residual):
        total = x + residual
        doubled = total * 2.0  # another user of the sum, before the weight is computed
        weight = self.weight.float() + 1.0
        normed = ad.torch_rmsnorm(total, weight, 1e-6)
        return normed + doubled


def test_a_weight_computed_after_the_add_is_hoisted():
    model = _LateWeight()
    x, residual = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    dims = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
    gm = torch_export_to_gm(
        model, {"x": x, "residual": residual}, {"x": dict(dims), "residual": dict(dims)}
    )
    gm, info = apply(gm, "fuse_add_rms_norm", backend="torch")
    assert info.num_matches == 1
    torch.testing.assert_close(gm(x, residual), model(x, residual), atol=1e-6, rtol=1e-6)


def test_auto_leaves_a_cpu_graph_alone():
    gm, _ = loaded_graph("llama")
    gm, info = apply(gm, "fuse_add_rms_norm", strict=True)
    assert info.skipped and op_counts(gm, add=aten.add.Tensor) == {"add": RESIDUAL_ADDS}
