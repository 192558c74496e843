"""fuse_moe: torch_moe -> triton_moe_fused (Triton interpreter on CPU) or torch_moe_grouped;
the logits do not change and still match Hugging Face; backend choice and its errors."""

import pytest
import torch
from fusion_helpers import ad, apply, hf_logits, loaded_graph, logits, op_counts, sample_inputs

from autodeploy.transforms import InferenceOptimizer
from autodeploy.utils.errors import BuildError, ConfigError

MOE_LAYERS = 2  # tiny mixtral: both layers sparse


def _moe_counts(gm):
    return op_counts(gm, ref=ad.torch_moe, grouped=ad.torch_moe_grouped, triton=ad.triton_moe_fused)


@pytest.mark.parametrize(
    "backend, expected",
    [("auto", "grouped"), ("torch_grouped", "grouped"), ("triton", "triton"), ("torch", "ref")],
)
def test_every_moe_op_runs_the_chosen_kernel(monkeypatch, backend, expected):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    gm, hf_model = loaded_graph("mixtral")
    inputs = sample_inputs(seq=5)
    before = logits(gm, inputs)
    assert _moe_counts(gm) == {"ref": MOE_LAYERS, "grouped": 0, "triton": 0}
    gm, info = apply(gm, "fuse_moe", backend=backend)
    assert info.num_matches == (0 if expected == "ref" else MOE_LAYERS)
    assert _moe_counts(gm) == {"ref": 0, "grouped": 0, "triton": 0, expected: MOE_LAYERS}
    after = logits(gm, inputs)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, hf_logits(hf_model, inputs), atol=1e-4, rtol=1e-4)


def test_explicit_triton_on_cpu_without_the_interpreter_is_a_reported_problem(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gm, _ = loaded_graph("mixtral")
    with pytest.raises(BuildError, match="needs a CUDA device.*TRITON_INTERPRET"):
        apply(gm, "fuse_moe", strict=True, backend="triton")


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="backend"):
        InferenceOptimizer(None, {"fuse_moe": {"stage": "post_load_fusion", "backend": "trtllm"}})


def test_build_summary_records_the_choice_per_node(monkeypatch):
    """With auto on CPU, the resolver picks torch_grouped for every MoE node and says why it
    did not take triton (auto never picks it off CUDA)."""
    from autodeploy.custom_ops.backend_resolver import recorded_choices

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gm, _ = loaded_graph("mixtral")
    gm, _ = apply(gm, "fuse_moe")
    rows = [r for r in recorded_choices(gm) if r["family"] == "moe"]
    assert [r["backend"] for r in rows] == ["torch_grouped"] * MOE_LAYERS
    assert "auto does not pick it on cpu" in rows[0]["refused"]["triton"]


def test_dense_model_is_unchanged():
    gm, _ = loaded_graph("llama")
    gm, info = apply(gm, "fuse_moe")
    assert info.skipped and info.num_matches == 0
