"""The hybrid bench presets: the Nemotron-H 8B shape (for GPU runs) and a tiny hybrid for CPU."""

from __future__ import annotations

import torch
from transformers import AutoConfig

from autodeploy.tools.bench_presets import load_preset, preset_names, weight_bytes_per_step


def test_nemotron_h_8b_preset_has_the_8b_shape():
    assert {"nemotron-h-8b", "tiny-hybrid"} <= set(preset_names())
    preset = load_preset("nemotron-h-8b")
    config = AutoConfig.for_model(**preset.config)
    types = config.layers_block_type
    assert len(types) == 52
    kinds = ("linear_attention", "full_attention", "mlp")  # transformers' names: M, *, -
    assert [types.count(t) for t in kinds] == [24, 4, 24]
    assert config.mamba_num_heads * config.mamba_head_dim == 2 * config.hidden_size
    embedding = preset.vocab_size * config.hidden_size
    params = weight_bytes_per_step(preset.config, torch.bfloat16) // 2 + embedding
    assert 8.0e9 < params < 8.2e9  # 8.1B, as the model card says


def test_tiny_hybrid_preset_mixes_every_layer_kind():
    config = AutoConfig.for_model(**load_preset("tiny-hybrid").config)
    assert config.layers_block_type == [
        "linear_attention",
        "full_attention",
        "linear_attention",
        "mlp",
    ]
    assert config.hidden_size == 64 and config.chunk_size == 8
