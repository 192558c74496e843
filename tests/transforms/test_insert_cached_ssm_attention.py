"""insert_cached_ssm_attention (with insert_cached_causal_conv): structure, state caches, and
cached == uncached over prefill, chunked prefill, decode and mixed batches."""

from __future__ import annotations

import pytest
import torch
from cached_model_helpers import CachedRunner, make_cm
from tiny_mamba import CONV_DIM, HEAD_DIM, HEADS, KERNEL, STATE, VOCAB, export_tiny_mamba

from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import count_ops, placeholders
from autodeploy.utils.errors import ConfigError

ad = torch.ops.auto_deploy
METADATA = ["batch_info_host", "cu_seqlen", "input_pos", "slot_idx"]


def build_cached(gm, cm, ssm: dict | None = None, conv: dict | None = None):
    config = {
        "move_inputs_to_device": {"stage": "weight_load"},
        "insert_cached_ssm_attention": {"stage": "cache_init", **(ssm or {})},
        "insert_cached_causal_conv": {"stage": "cache_init", **(conv or {})},
        "initialize_cache": {"stage": "cache_init"},
    }
    return InferenceOptimizer(None, config)(cm, gm)


def test_replaces_every_mixer_op_and_registers_state_caches():
    _, gm = export_tiny_mamba()
    assert count_ops(gm, ad.torch_ssm) == 2 and count_ops(gm, ad.torch_causal_conv1d) == 2
    cm = make_cm(max_batch_size=3)
    gm = build_cached(gm, cm)
    assert count_ops(gm, (ad.torch_ssm, ad.torch_causal_conv1d)) == 0
    assert count_ops(gm, ad.torch_cached_ssm) == 2
    assert count_ops(gm, ad.torch_cached_causal_conv1d) == 2
    names = [p.target for p in placeholders(gm)]
    caches = ["ssm_state_0", "ssm_state_1", "conv_state_0", "conv_state_1"]
    assert names == ["input_ids", "position_ids", *METADATA, *caches]
    slots = 4  # max_batch_size + the spare slot for CUDA-graph padding
    assert cm.caches["ssm_state_0"].shape == (slots, HEADS, HEAD_DIM, STATE)
    assert cm.caches["ssm_state_0"].dtype == torch.float32  # mamba_ssm_cache_dtype default
    assert cm.caches["conv_state_1"].shape == (slots, CONV_DIM, KERNEL - 1)
    assert not cm.paged_resources  # no attention: no KV pages


def test_ssm_cache_dtype_setting():
    _, gm = export_tiny_mamba()
    cm = make_cm(mamba_ssm_cache_dtype="bfloat16")
    build_cached(gm, cm)
    assert cm.caches["ssm_state_0"].dtype == torch.bfloat16
    assert cm.caches["conv_state_0"].dtype == torch.float32  # kv_cache_config.dtype: auto


def test_unknown_backend_is_a_config_error_with_a_suggestion():
    _, gm = export_tiny_mamba()
    with pytest.raises(
        (ConfigError, ValueError), match="unknown ssm backend 'trch'. Did you mean 'torch'"
    ):
        build_cached(gm, make_cm(), ssm={"backend": "trch"})


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cached_model_matches_full_recomputation(backend, monkeypatch):
    """Two sequences: prefill in chunks (the state carries over), then mixed prefill + decode
    steps; every new token's logits equal the uncached model over the whole sequence. The
    triton backends run in the Triton interpreter on CPU."""
    if backend == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    model, gm = export_tiny_mamba()
    cm = make_cm()
    cached = build_cached(gm, cm, ssm={"backend": backend}, conv={"backend": backend})
    cached_op = getattr(ad, f"{backend}_cached_ssm")
    assert count_ops(cached, cached_op) == 2
    g = torch.Generator().manual_seed(0)
    tokens = {s: torch.randint(0, VOCAB, (n,), generator=g).tolist() for s, n in ((0, 13), (1, 9))}
    runner = CachedRunner(cached, cm)
    schedule = [
        [(0, tokens[0][:6])],  # prefill chunk 1 (crosses a scan chunk of 4)
        [(0, tokens[0][6:11]), (1, tokens[1][:7])],  # continuation + a new sequence
        [(1, tokens[1][7:8]), (0, tokens[0][11:12])],  # two decodes
        [(1, tokens[1][8:9]), (0, tokens[0][12:13])],
    ]
    got: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for step in schedule:
        for seq, logits in runner.step(step).items():
            got[seq].append(logits)
    for seq, ids in tokens.items():
        with torch.no_grad():
            expected = model(torch.tensor([ids]), torch.arange(len(ids))[None])[0]
        torch.testing.assert_close(torch.cat(got[seq]), expected, atol=1e-4, rtol=1e-4)


def test_upstream_backend_names_are_accepted():
    from autodeploy.transforms.library.cache_init.insert_cached_causal_conv import (
        InsertCachedCausalConvConfig,
    )
    from autodeploy.transforms.library.cache_init.insert_cached_ssm_attention import (
        StateFamilyConfig,
    )

    assert StateFamilyConfig(stage="cache_init", backend="triton_ssm").backend == "triton"
    conv = InsertCachedCausalConvConfig(stage="cache_init", backend="torch_causal_conv")
    assert conv.backend == "torch"
