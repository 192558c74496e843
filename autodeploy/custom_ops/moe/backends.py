"""The ``moe`` op family: its backends and their limits (importable without triton).

``torch`` (the reference ``torch_moe``: every expert on every token; by name only),
``torch_grouped`` (``torch_moe_grouped``: each expert on its own tokens; ``auto`` picks it on
any device) and ``triton`` (``triton_moe_fused``; ``auto`` prefers it on CUDA). All three take
the same arguments (``torch_backend.py``), so ``fuse_moe`` swaps the node's target only. The
Triton input check ``triton_moe_input_problem`` is used by the op at run time and by
``supports`` at build time.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.fx import Node

from ...utils.node_args import node_val
from ..op_backend import BackendRegistry, OpBackend, OpFamily
from ..triton_availability import triton_unavailable
from .torch_backend import is_gated

MOE = BackendRegistry.register_family(
    OpFamily(
        name="moe",
        description="routed MLP experts (torch_moe)",
        setting="fuse_moe.backend",
    )
)

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_ACTIVATIONS = {"silu": 0, "gelu": 1}  # the activations the kernel fuses, by id


def triton_moe_input_problem(hidden_states: Any, activation: str, gated: bool = True) -> str | None:
    """Why ``triton_moe_fused`` cannot take these inputs (None: it can, or no shape)."""
    if not gated:
        return "ungated experts (the kernel fuses act(gate) * up)"
    if activation not in TRITON_ACTIVATIONS:
        return f"activation {activation!r} (the kernel fuses {', '.join(TRITON_ACTIVATIONS)})"
    if isinstance(hidden_states, torch.Tensor) and hidden_states.dtype not in TRITON_DTYPES:
        return f"dtype {hidden_states.dtype}"
    return None


def _activation(node: Node) -> str:
    return node.args[5] if len(node.args) > 5 else node.kwargs.get("activation", "silu")


class MoEBackend(OpBackend):
    """A moe backend and its op (same arguments as ``torch_moe``)."""

    op_name: ClassVar[str] = ""

    @classmethod
    def op(cls) -> Any:
        return getattr(torch.ops.auto_deploy, cls.op_name).default


@BackendRegistry.register("moe", "torch")
class TorchMoE(MoEBackend):
    """The reference: dense one-hot dispatch and combine (any device; slow)."""

    op_name = "torch_moe"


@BackendRegistry.register("moe", "torch_grouped")
class TorchGroupedMoE(MoEBackend):
    """Per-expert GEMMs over each expert's tokens (any device)."""

    op_name = "torch_moe_grouped"
    auto_priority = {"*": 1}


@BackendRegistry.register("moe", "triton")
class TritonMoE(MoEBackend):
    """Tokens sorted by expert, grouped GEMMs with the activation fused; fp16/bf16/fp32."""

    op_name = "triton_moe_fused"
    auto_priority = {"cuda": 10}

    @classmethod
    def unavailable(cls, device: torch.device | None) -> str | None:
        reason = triton_unavailable(device)
        if reason is None and not hasattr(torch.ops.auto_deploy, cls.op_name):
            return f"its op auto_deploy::{cls.op_name} is not registered"
        return reason

    @classmethod
    def supports(cls, node: Node) -> str | None:
        gate_up, down = node_val(node.args[3]), node_val(node.args[4])
        known = all(isinstance(w, torch.Tensor) for w in (gate_up, down))
        gated = is_gated(gate_up, down) if known else True
        return triton_moe_input_problem(node_val(node.args[0]), _activation(node), gated)
