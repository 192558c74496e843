"""The post_load_fusion stage as default.yaml lists it, in front of the paged KV cache.

CPU: every fusion forced on (Triton kernels in the interpreter, gather_logits_before_lm_head
enabled); prefill, decode and padded decode give HF eager's last-token logits, and the
attention ops the fusions leave behind are still accepted by insert_cached_attention.
GPU: the defaults as they are (``backend: auto`` -> Triton on CUDA), fp32 against HF and bf16
against the same pipeline without the fusions (error vs fp32 HF no more than ~2x).
"""

import pytest
import torch
from fusion_helpers import ad, default_transforms, loaded_graph, make_cm, op_counts

from autodeploy.transforms import InferenceOptimizer, Stages

PROMPTS = [[5, 17, 3], [9, 8, 7, 6], [11, 12]]
DECODE = [[7, 1, 4], [2, 9, 30]]  # one token per sequence and step (fixed, not sampled)
FUSIONS = ("fuse_gemms", "fuse_add_rms_norm", "fuse_rmsnorm", "optimize_rope")


def build(gm, cm, fusions: bool = True, **overrides):
    """post_load_fusion .. cache_init of default.yaml (fusions disabled if not ``fusions``)."""
    transforms = {
        name: cfg
        for name, cfg in default_transforms(Stages.CACHE_INIT).items()
        if Stages(cfg["stage"]).order >= Stages.POST_LOAD_FUSION.order
    }
    transforms["gather_logits_before_lm_head"]["enabled"] = True
    for name in FUSIONS:
        transforms[name]["enabled"] = fusions
    for name, settings in overrides.items():
        transforms[name].update(settings)
    return InferenceOptimizer(None, transforms, strict=True)(cm, gm)


def run(gm, cm, padded_last_step: bool = False) -> list[torch.Tensor]:
    """Prefill PROMPTS, then the DECODE steps; every step's [num_sequences, vocab] logits."""
    tokens, pages, steps = [[] for _ in PROMPTS], [[1, 2], [3, 4], [5, 6]], []
    schedule = [PROMPTS] + [[[t] for t in step] for step in DECODE]
    for index, new_tokens in enumerate(schedule):
        padded = [4] if padded_last_step and index == len(schedule) - 1 else None
        cm.info.set_padded_batch_sizes(padded)
        cm.info.nest_sequences(new_tokens, [len(t) for t in tokens], pages)
        for seq, new in zip(tokens, new_tokens):
            seq.extend(new)
        with torch.no_grad():
            out = gm(**cm.named_args)
        rows = len(PROMPTS) if padded is None else padded[0]
        assert out.shape[:2] == ((1, rows) if index == 0 else (rows, 1))
        steps.append(out.reshape(rows, -1)[: len(PROMPTS)].float().cpu())
    cm.info.set_padded_batch_sizes(None)
    return steps


def hf_steps(hf_model) -> list[torch.Tensor]:
    tokens, steps = [list(p) for p in PROMPTS], []
    for new_tokens in [None] + DECODE:
        if new_tokens is not None:
            for seq, token in zip(tokens, new_tokens):
                seq.append(token)
        with torch.no_grad():
            steps.append(torch.stack([hf_model(torch.tensor([t])).logits[0, -1] for t in tokens]))
    return steps


def test_cpu_all_fusions_with_the_kv_cache_match_hf(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    gm, hf_model = loaded_graph("llama")
    cm = make_cm()
    triton = {"backend": "triton"}
    gm = build(gm, cm, fuse_add_rms_norm=triton, fuse_rmsnorm=triton, optimize_rope=triton)
    assert op_counts(
        gm,
        attention=ad.torch_attention,
        cached=ad.sdpa_cached_attention,  # auto on CPU
        rope=ad.triton_rope_with_cos_sin_cache,
        fused=ad.triton_fused_add_rmsnorm,
        norm=ad.triton_rmsnorm,
        gather=ad.torch_gather_last_tokens,
    ) == {"attention": 0, "cached": 2, "rope": 2, "fused": 4, "norm": 1, "gather": 1}
    for got, expected in zip(run(gm, cm, padded_last_step=True), hf_steps(hf_model)):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_defaults_use_the_kernels_and_match_hf():
    gm, hf_model = loaded_graph("llama", device="cuda")
    cm = make_cm("cuda")
    gm = build(gm, cm)
    assert op_counts(
        gm,
        rope=ad.triton_rope_with_cos_sin_cache,
        fused=ad.triton_fused_add_rmsnorm,
        norm=ad.triton_rmsnorm,
    ) == {"rope": 2, "fused": 4, "norm": 1}
    for got, expected in zip(run(gm, cm, padded_last_step=True), hf_steps(hf_model)):
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
def test_gpu_bf16_fusions_are_as_accurate_as_the_reference_ops():
    reference = hf_steps(loaded_graph("llama")[1])
    errors = {}
    for fusions in (True, False):
        gm, _ = loaded_graph("llama", device="cuda", dtype="bfloat16")
        cm = make_cm("cuda")
        gm = build(gm, cm, fusions=fusions)
        errors[fusions] = max(
            (got - ref).abs().max().item() for got, ref in zip(run(gm, cm), reference)
        )
    assert 0 < errors[True] <= 2 * errors[False] + 1e-3, errors
