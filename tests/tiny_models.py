"""Tiny random-weight configs of real Hugging Face architectures, shared by the tests.

Every config has 2 layers, hidden size 64, 4 attention heads (2 KV heads where the architecture
has GQA) and a 256-token vocabulary, so a model builds and exports in about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

_COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=512,
    # Special tokens inside the tiny vocabulary (the defaults point past it).
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
_GQA = dict(num_key_value_heads=2)

# architecture name -> (config class name, extra settings)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", _GQA),
    "mistral": ("MistralConfig", {**_GQA, "sliding_window": 8}),
    "qwen2": ("Qwen2Config", _GQA),
    "qwen3": ("Qwen3Config", {**_GQA, "head_dim": 16}),
    "phi3": ("Phi3Config", _GQA),
    "gemma": ("GemmaConfig", {**_GQA, "head_dim": 16}),
    "gemma2": (
        "Gemma2Config",
        {
            **_GQA,
            "head_dim": 16,
            "sliding_window": 8,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "query_pre_attn_scalar": 16,
        },
    ),
    "granite": (
        "GraniteConfig",
        {
            **_GQA,
            "attention_multiplier": 0.2,
            "embedding_multiplier": 2.0,
            "residual_multiplier": 0.5,
            "logits_scaling": 4.0,
        },
    ),
    "olmo2": ("Olmo2Config", _GQA),
    "starcoder2": ("Starcoder2Config", {**_GQA, "sliding_window": None}),
    "gpt_neox": ("GPTNeoXConfig", {"rotary_pct": 0.5}),
    "phi": ("PhiConfig", {"partial_rotary_factor": 0.5}),
    "smollm3": ("SmolLM3Config", _GQA),
    "glm": ("GlmConfig", {**_GQA, "head_dim": 16}),
}
# Mixture of experts: 4 experts, top-2, small expert MLPs (tests/models/test_moe_models.py).
MOE_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "mixtral": ("MixtralConfig", {**_GQA, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {
            **_GQA,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 48,
            "mlp_only_layers": [1],  # layer 1 is a dense MLP
        },
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        {
            **_GQA,
            "head_dim": 16,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
        },
    ),
}


# Mamba-2 and hybrid architectures: 8 SSM heads of 16 channels (expand 2), 2 groups, state 16,
# chunk 8 (so prompts span several chunks); one attention layer in the hybrids.
_SSM = dict(chunk_size=8, n_groups=2)
HYBRID_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "mamba2": ("Mamba2Config", {**_SSM, "num_heads": 8, "head_dim": 16, "state_size": 16}),
    "nemotron_h": (
        "NemotronHConfig",
        {
            **_SSM,
            **_GQA,
            "layers_block_type": ["mamba", "attention", "mlp"],
            "num_hidden_layers": 3,
            "head_dim": 16,
            "mamba_num_heads": 8,
            "mamba_head_dim": 16,
            "ssm_state_size": 16,
        },
    ),
    "bamba": (
        "BambaConfig",
        {
            **_GQA,
            "attn_layer_indices": [1],
            "mamba_n_heads": 8,
            "mamba_d_head": 16,
            "mamba_n_groups": 2,
            "mamba_d_state": 16,
            "mamba_chunk_size": 8,
        },
    ),
    "granitemoehybrid": (  # dense (no experts): the granite-4.0-h-micro layout
        "GraniteMoeHybridConfig",
        {
            **_GQA,
            "layer_types": ["mamba", "attention"],
            "num_local_experts": 0,
            "mamba_n_heads": 8,
            "mamba_d_head": 16,
            "mamba_n_groups": 2,
            "mamba_d_state": 16,
            "mamba_chunk_size": 8,
        },
    ),
    "granitemoehybrid_moe": (  # with experts: the granite-4.0-h-tiny/small layout
        "GraniteMoeHybridConfig",
        {
            **_GQA,
            "layer_types": ["mamba", "attention"],
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "shared_intermediate_size": 48,
            "mamba_n_heads": 8,
            "mamba_d_head": 16,
            "mamba_n_groups": 2,
            "mamba_d_state": 16,
            "mamba_chunk_size": 8,
        },
    ),
    "nemotron_h_moe": (  # the Nemotron-3-Nano layout: ungated relu^2 experts + a shared expert
        "NemotronHConfig",
        {
            **_SSM,
            **_GQA,
            "layers_block_type": ["mamba", "moe", "attention"],
            "num_hidden_layers": 3,
            "head_dim": 16,
            "mamba_num_heads": 8,
            "mamba_head_dim": 16,
            "ssm_state_size": 16,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "n_shared_experts": 1,
            "moe_shared_expert_intermediate_size": 48,
        },
    ),
    "zamba2": (  # a mixer in every layer; layer 1 also runs the shared attention block
        "Zamba2Config",
        {
            **_SSM,
            "layers_block_type": ["mamba", "hybrid"],
            "num_key_value_heads": 4,
            "n_mamba_heads": 8,
            "mamba_headdim": 16,
            "mamba_ngroups": 2,
            "mamba_d_state": 16,
        },
    ),
}


def tiny_config(arch: str, **overrides: Any) -> transformers.PretrainedConfig:
    """A tiny config of ``arch`` (ARCHITECTURES, MOE_ARCHITECTURES, HYBRID_ARCHITECTURES);
    ``overrides`` win."""
    class_name, extra = {**ARCHITECTURES, **MOE_ARCHITECTURES, **HYBRID_ARCHITECTURES}[arch]
    config_cls = getattr(transformers, class_name)
    return config_cls(**{**_COMMON, **extra, **overrides})


def tiny_model(arch: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """An fp32 eval-mode HF model with random weights (eager attention as the reference)."""
    torch.manual_seed(seed)
    config = tiny_config(arch, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.eval()


def save_tiny(path: Path, arch: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """Write a tiny checkpoint (config.json + model.safetensors) to ``path``; return the model."""
    model = tiny_model(arch, seed=seed, **overrides)
    model.save_pretrained(path)
    return model
