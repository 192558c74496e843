"""The ``rms_norm`` op family: its backends and their limits (importable without triton).

``torch`` (reference: ``torch_rmsnorm``, ``torch_fused_add_rmsnorm``), ``triton`` (both ops;
``auto`` picks it on CUDA) and ``flashinfer`` (``flashinfer_rmsnorm`` only; by name). Each
backend names its op per role (``ops``): ``"rmsnorm"`` and ``"fused_add_rmsnorm"``. The input
check ``rmsnorm_input_problem`` is used by the Triton ops at run time and by ``supports`` at
build time.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.fx import Node

from ...utils.node_args import node_val
from ..op_backend import BackendRegistry, OpBackend, OpFamily
from ..triton_availability import triton_unavailable

RMS_NORM = BackendRegistry.register_family(
    OpFamily(
        name="rms_norm",
        description="RMSNorm and fused residual add + RMSNorm (torch_rmsnorm)",
        setting="fuse_rmsnorm.backend / fuse_add_rms_norm.backend",
    )
)

TRITON_MAX_HIDDEN = 16384  # one row per program, the whole row in registers
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FLASHINFER_DTYPES = (torch.float16, torch.bfloat16)


def rmsnorm_input_problem(
    x: Any, dtypes: tuple[torch.dtype, ...], max_hidden: int | None = None
) -> str | None:
    """Why a kernel with these limits cannot normalize ``x`` (None: it can, or no shape)."""
    if not isinstance(x, torch.Tensor):
        return None  # no shape information: the kernel checks at run time
    if x.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        return f"dtype {x.dtype} is not supported ({names})"
    if max_hidden is not None and x.shape[-1] > max_hidden:
        return f"hidden size {x.shape[-1]} > {max_hidden}"
    return None


class RMSNormBackend(OpBackend):
    """An rms_norm backend: its op per role (``None``: the role has no op here)."""

    ops: ClassVar[dict[str, str]] = {}

    @classmethod
    def op(cls, role: str) -> Any:
        """The ``torch.ops.auto_deploy`` overload for ``role`` (None if it has none)."""
        name = cls.ops.get(role)
        return getattr(torch.ops.auto_deploy, name).default if name else None

    @classmethod
    def _op_missing(cls) -> str | None:
        missing = [n for n in cls.ops.values() if not hasattr(torch.ops.auto_deploy, n)]
        return f"its op auto_deploy::{missing[0]} is not registered" if missing else None


@BackendRegistry.register("rms_norm", "torch")
class TorchRMSNorm(RMSNormBackend):
    """The reference ops (any device, any dtype)."""

    ops = {"rmsnorm": "torch_rmsnorm", "fused_add_rmsnorm": "torch_fused_add_rmsnorm"}


@BackendRegistry.register("rms_norm", "triton")
class TritonRMSNorm(RMSNormBackend):
    """One Triton program per row; hidden size <= 16384; fp16/bf16/fp32."""

    ops = {"rmsnorm": "triton_rmsnorm", "fused_add_rmsnorm": "triton_fused_add_rmsnorm"}
    auto_priority = {"cuda": 10}

    @classmethod
    def unavailable(cls, device: torch.device | None) -> str | None:
        return triton_unavailable(device) or cls._op_missing()

    @classmethod
    def supports(cls, node: Node) -> str | None:
        return rmsnorm_input_problem(node_val(node.args[0]), TRITON_DTYPES, TRITON_MAX_HIDDEN)


@BackendRegistry.register("rms_norm", "flashinfer")
class FlashInferRMSNorm(RMSNormBackend):
    """``flashinfer.norm.rmsnorm`` (CUDA; fp16/bf16); no fused-add op."""

    ops = {"rmsnorm": "flashinfer_rmsnorm"}

    @classmethod
    def unavailable(cls, device: torch.device | None) -> str | None:
        if not hasattr(torch.ops.auto_deploy, "flashinfer_rmsnorm"):
            return (
                "its op auto_deploy::flashinfer_rmsnorm is not registered (is "
                "'flashinfer-python' installed? pip install flashinfer-python)"
            )
        if device is not None and device.type != "cuda":
            return f"needs a CUDA device but the graph runs on {device.type}"
        return None

    @classmethod
    def supports(cls, node: Node) -> str | None:
        return rmsnorm_input_problem(node_val(node.args[0]), FLASHINFER_DTYPES)
