"""Route Hugging Face attention straight to the canonical ``torch_attention`` op.

Transformers lets a model pick its attention function by name (``attn_implementation``). We
register ``"autodeploy"``: every attention layer then calls ``torch_attention`` with all its
features (scaling, sliding window, soft-capping, sinks) as explicit arguments, and HF builds no
mask at all (it only builds masks for implementations it knows). That keeps the exported graph
free of mask arithmetic and makes sure no feature is lost on the way to the cached kernels.
"""

from __future__ import annotations

from typing import Any

import torch

from ..utils.errors import ExportError

ATTN_IMPLEMENTATION = "autodeploy"

# Keyword arguments HF passes that carry no attention semantics for us.
_IGNORED_KWARGS = frozenset(
    {
        "position_ids",
        "cache_position",
        "use_cache",
        "output_attentions",
        "past_key_values",
        "past_key_value",
        "layer_idx",
        "is_causal",
        "position_embeddings",
        "output_router_logits",  # MoE models forward their router-logits flag to every layer
    }
)


def autodeploy_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [batch, num_heads, seq, head_dim]
    key: torch.Tensor,  # [batch, num_kv_heads, seq, head_dim]
    value: torch.Tensor,  # [batch, num_kv_heads, seq, head_dim]
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    unknown = {k for k, v in kwargs.items() if k not in _IGNORED_KWARGS and v is not None}
    if unknown:
        raise ExportError(
            f"{type(module).__name__} passes attention arguments autodeploy does not handle: "
            f"{', '.join(sorted(unknown))}. Export with `attn_implementation: sdpa` (model "
            "factory option) or file an issue with the model name."
        )
    if attention_mask is not None:
        raise ExportError(
            f"{type(module).__name__} received an explicit attention mask; autodeploy only "
            "supports causal decoder attention (the mask is rebuilt from sequence metadata)."
        )
    out = torch.ops.auto_deploy.torch_attention(
        query,
        key,
        value,
        None,
        dropout,
        bool(getattr(module, "is_causal", True)),
        scaling,
        s_aux,
        sliding_window,
        softcap,
        "bnsd",
    )
    return out.transpose(1, 2), None  # HF expects [batch, seq, num_heads, head_dim]


def register_hf_attention() -> None:
    """Make ``attn_implementation="autodeploy"`` available to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, autodeploy_attention)
