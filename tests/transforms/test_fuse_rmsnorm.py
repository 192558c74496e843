"""fuse_rmsnorm: torch_rmsnorm -> triton_rmsnorm (Triton interpreter on CPU); backend choice
and its errors."""

import importlib.util

import pytest
import torch
import torch.nn as nn
from fusion_helpers import ad, apply, hf_logits, loaded_graph, logits, op_counts, sample_inputs
from torch.export import Dim

from autodeploy.export import torch_export_to_gm
from autodeploy.transforms import InferenceOptimizer
from autodeploy.utils.errors import BuildError, ConfigError

NORMS = 2 * 2 + 1  # two per layer and the final norm


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_every_norm_runs_the_triton_kernel(interpreter):
    gm, hf_model = loaded_graph("llama")
    inputs = sample_inputs(seq=5)
    before = logits(gm, inputs)
    assert op_counts(gm, ref=ad.torch_rmsnorm) == {"ref": NORMS}
    gm, info = apply(gm, "fuse_rmsnorm", backend="triton")
    assert info.num_matches == NORMS
    assert op_counts(gm, ref=ad.torch_rmsnorm, triton=ad.triton_rmsnorm) == {
        "ref": 0,
        "triton": NORMS,
    }
    after = logits(gm, inputs)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, hf_logits(hf_model, inputs), atol=1e-4, rtol=1e-4)


def test_auto_and_torch_leave_a_cpu_graph_alone(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for backend in ("auto", "torch"):
        gm, _ = loaded_graph("llama")
        gm, info = apply(gm, "fuse_rmsnorm", strict=True, backend=backend)
        assert info.skipped and op_counts(gm, ref=ad.torch_rmsnorm) == {"ref": NORMS}
        assert gm.meta["_autodeploy"]["problems"] == []


def test_explicit_triton_on_cpu_without_the_interpreter_is_a_reported_problem(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gm, _ = loaded_graph("llama")
    with pytest.raises(BuildError, match="needs a CUDA device.*TRITON_INTERPRET"):
        apply(gm, "fuse_rmsnorm", strict=True, backend="triton")
    gm, info = apply(gm, "fuse_rmsnorm", backend="triton")  # non-strict: warned, unchanged
    assert info.skipped and op_counts(gm, ref=ad.torch_rmsnorm) == {"ref": NORMS}
    [problem] = gm.meta["_autodeploy"]["problems"]
    assert problem.transform == "fuse_rmsnorm"


@pytest.mark.skipif(
    importlib.util.find_spec("flashinfer") is not None, reason="flashinfer is installed"
)
def test_flashinfer_without_flashinfer_is_a_config_error():
    with pytest.raises(ConfigError, match="flashinfer.*not available.*pip install flashinfer"):
        InferenceOptimizer(
            None, {"fuse_rmsnorm": {"stage": "post_load_fusion", "backend": "flashinfer"}}
        )


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="backend"):
        InferenceOptimizer(
            None, {"fuse_rmsnorm": {"stage": "post_load_fusion", "backend": "trition"}}
        )


class _WideNorm(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(hidden) + 0.5)

    def forward(self, x):
        return ad.torch_rmsnorm(x, self.weight, 1e-6)


@pytest.mark.parametrize("hidden, swapped", [(40, 1), (16385, 0)])
def test_hidden_sizes_beyond_the_kernel_keep_the_reference(interpreter, hidden, swapped):
    model = _WideNorm(hidden)
    x = torch.randn(2, 3, hidden)
    gm = torch_export_to_gm(model, {"x": x}, {"x": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}})
    gm, info = apply(gm, "fuse_rmsnorm", backend="triton")
    assert info.num_matches == swapped
    assert op_counts(gm, triton=ad.triton_rmsnorm) == {"triton": swapped}
    torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)
