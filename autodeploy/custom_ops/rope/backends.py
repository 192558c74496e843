"""The ``rope`` op family: its backends (importable without triton).

``torch`` (reference ops) and ``triton`` (``auto`` picks it on CUDA). Each backend names its op
per role (``ops``): ``"explicit_cos_sin"`` (cos/sin given per token) and ``"cos_sin_cache"``
(cos/sin rows looked up by position in a table). The Triton ops check their inputs at run time
with ``rope_input_problem``, which ``supports`` runs at build time on the node's fake tensors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.fx import Node

from ...utils.node_args import bound_args, node_val
from ..op_backend import BackendRegistry, OpBackend, OpFamily
from ..triton_availability import triton_unavailable

ROPE = BackendRegistry.register_family(
    OpFamily(
        name="rope",
        description="rotate-half rotary embedding of q and k (torch_rope_with_explicit_cos_sin)",
        setting="optimize_rope.backend",
    )
)

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def rope_input_problem(q: Any, k: Any) -> str | None:
    """Why the Triton kernel cannot rotate ``q``/``k`` (None: it can, or no shapes)."""
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
        return None
    if q.dtype not in TRITON_DTYPES or k.dtype != q.dtype:
        return (
            f"q/k dtypes {q.dtype}/{k.dtype} are not supported (both float16, bfloat16 or float32)"
        )
    return None


class RopeBackend(OpBackend):
    """A rope backend: its op per role."""

    ops: ClassVar[dict[str, str]] = {}

    @classmethod
    def op(cls, role: str) -> Any:
        return getattr(torch.ops.auto_deploy, cls.ops[role]).default


@BackendRegistry.register("rope", "torch")
class TorchRope(RopeBackend):
    """The reference ops (any device, any dtype)."""

    ops = {
        "explicit_cos_sin": "torch_rope_with_explicit_cos_sin",
        "cos_sin_cache": "torch_rope_with_cos_sin_cache",
    }


@BackendRegistry.register("rope", "triton")
class TritonRope(RopeBackend):
    """q and k of a token in one Triton launch; fp16/bf16/fp32."""

    ops = {
        "explicit_cos_sin": "triton_rope_with_explicit_cos_sin",
        "cos_sin_cache": "triton_rope_with_cos_sin_cache",
    }
    auto_priority = {"cuda": 10}

    @classmethod
    def unavailable(cls, device: torch.device | None) -> str | None:
        reason = triton_unavailable(device)
        if reason is None and not hasattr(torch.ops.auto_deploy, cls.ops["cos_sin_cache"]):
            reason = f"its op auto_deploy::{cls.ops['cos_sin_cache']} is not registered"
        return reason

    @classmethod
    def supports(cls, node: Node) -> str | None:
        args = bound_args(node)
        return rope_input_problem(node_val(args["q"]), node_val(args["k"]))
