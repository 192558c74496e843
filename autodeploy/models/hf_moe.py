"""Hugging Face mixture-of-experts blocks -> the canonical ``torch_moe`` op.

Transformers 5 gives every MoE family the same experts module: stacked weights
``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]``, a forward ``(hidden_states,
top_k_index, top_k_weights)``, and a pluggable implementation (``@use_experts_implementation``,
looked up in ``ALL_EXPERTS_FUNCTIONS``). The router, the shared experts and the dense layers are
ordinary code that exports as it is; only the expert loop (``nonzero``, ``histc``, per-expert
slices: data-dependent shapes) cannot be exported. So a model goes through an **export patch**
(``export/library/hf_moe_experts.py``), not a matcher: while exporting, every experts module runs
``experts_to_torch_moe`` below, which calls ``torch_moe`` with the module's weights. No pattern
has to be recognized afterwards, and nothing of the routing is lost (softmax or sigmoid scores,
group-limited top-k, renormalization, bias and scaling all stay in the graph as the model wrote
them).

Ungated experts (``has_gate=False``: Nemotron-H's ``up_proj [E, I, H]``, relu^2, then
``down_proj``) pass ``up_proj`` where gated ones pass ``gate_up_proj``; ``torch_moe`` tells the
two apart by shape. An experts module that does not have this shape (biases, transposed or
interleaved weights, a custom gate, a post-expert norm, an activation the op has no name for),
or an MoE block that does not use the pluggable experts at all, is rejected by
``check_moe_support`` with the module class and what is not supported.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..utils.errors import ExportError

# Hugging Face activation classes -> the names torch_moe takes (custom_ops/moe/torch_backend.py).
_ACTIVATION_NAMES = {
    "SiLUActivation": "silu",
    "SiLU": "silu",
    "GELUActivation": "gelu",
    "GELU": "gelu",
    "GELUTanh": "gelu_tanh",
    "NewGELUActivation": "gelu_tanh",
    "PytorchGELUTanh": "gelu_tanh",
    "ReLU": "relu",
    "ReLUSquaredActivation": "relu2",
}
# Module classes that hold a mixture of experts (MixtralSparseMoeBlock, DbrxExperts, JetMoeMoE,
# Llama4TextMoe, DeepseekV3MoE, ...); family prefixes like "Qwen2Moe" are not enough.
_MOE_CLASS = re.compile(r"(MoeBlock|Moe|MoE|Experts)$")
# Flags that ``@use_experts_implementation`` sets on an experts module, and the value torch_moe
# needs for each (``has_gate`` may be either: ungated experts pass ``up_proj`` alone).
_REQUIRED_FLAGS = {
    "has_bias": (False, "expert biases"),
    "is_transposed": (False, "transposed expert weights ([E, H, 2I])"),
    "is_concatenated": (True, "interleaved gate/up rows"),
    "has_post_expert_norm": (False, "a norm after each expert"),
}


def is_pluggable_experts(module: nn.Module) -> bool:
    """True for an experts module transformers built with ``@use_experts_implementation``."""
    return hasattr(module, "has_gate") and hasattr(module, "is_transposed")


def _input_projection(module: nn.Module) -> str:
    """The stacked input weight: gate and up rows, or (ungated experts) up rows alone."""
    return "gate_up_proj" if getattr(module, "has_gate", True) else "up_proj"


def activation_name(module: nn.Module) -> str | None:
    act = getattr(module, "act_fn", None)
    return _ACTIVATION_NAMES.get(type(act).__name__) if act is not None else None


def unsupported_features(module: nn.Module) -> list[str]:
    """What keeps a pluggable experts module from ``torch_moe`` (empty: it fits)."""
    problems = [
        what
        for flag, (needed, what) in _REQUIRED_FLAGS.items()
        if bool(getattr(module, flag, needed)) != needed
    ]
    from transformers.integrations import moe as hf_moe

    default_gate = getattr(hf_moe, "_default_apply_gate", None)
    gate = getattr(type(module), "_apply_gate", default_gate)
    if default_gate is not None and gate is not default_gate:
        problems.append(f"a custom gate function ({type(module).__name__}._apply_gate)")
    if activation_name(module) is None:
        problems.append(f"the activation {type(getattr(module, 'act_fn', None)).__name__}")
    for name in (_input_projection(module), "down_proj"):
        weight = getattr(module, name, None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
            problems.append(f"no stacked 3-D {name} parameter")
    return problems


def check_moe_support(model: nn.Module) -> None:
    """Raise ExportError for every MoE module that cannot become ``torch_moe``."""
    problems = []
    covered: set[str] = set()
    for name, module in model.named_modules():
        if is_pluggable_experts(module):
            covered.add(name)
            found = unsupported_features(module)
            if found:
                problems.append(f"{name} ({type(module).__name__}): {', '.join(found)}")
    for name, module in model.named_modules():
        if is_pluggable_experts(module) or not _MOE_CLASS.search(type(module).__name__):
            continue
        inside = any(c == name or c.startswith(f"{name}.") for c in covered)
        under = any(name.startswith(f"{c}.") for c in covered)
        if not inside and not under:
            problems.append(
                f"{name} ({type(module).__name__}): an MoE block without transformers' "
                "pluggable experts module (stacked gate_up_proj/down_proj)"
            )
    if problems:
        shown = "; ".join(problems[:4]) + (" ..." if len(problems) > 4 else "")
        raise ExportError(
            f"{type(model).__name__} has mixture-of-experts modules autodeploy cannot export: "
            f"{shown}. Supported: routed MLP experts with stacked weights: gated (Mixtral, "
            "Qwen2/3-MoE, OLMoE, ...) and ungated ones (Nemotron-H); see the README's 'What is "
            "supported'."
        )


def experts_to_torch_moe(
    module: nn.Module,
    hidden_states: torch.Tensor,  # [T, H]
    top_k_index: torch.Tensor,  # [T, K]
    top_k_weights: torch.Tensor,  # [T, K]
) -> torch.Tensor:
    """The experts forward used while exporting: one ``torch_moe`` call."""
    problems = unsupported_features(module)
    if problems:
        raise ExportError(
            f"{type(module).__name__} cannot be exported as torch_moe: it has "
            f"{', '.join(problems)}."
        )
    return torch.ops.auto_deploy.torch_moe(
        hidden_states,
        top_k_index,
        top_k_weights,
        getattr(module, _input_projection(module)),
        module.down_proj,
        activation_name(module),
    )
