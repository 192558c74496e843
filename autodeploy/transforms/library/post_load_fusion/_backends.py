"""Kernel-backend choice shared by the post_load_fusion transforms.

``backend`` of ``fuse_rmsnorm``, ``fuse_add_rms_norm`` and ``optimize_rope``:

- ``auto`` (default): Triton when the graph's weights are on CUDA. On any other device the
  transform is skipped (logged with the reason): the kernels need a GPU, and the reference ops
  are what a CPU should run.
- ``triton`` / ``flashinfer``: asked for explicitly. The backend's ops must be registered (its
  package installed), else the configuration is rejected. On CUDA it is used. Off CUDA the
  transform is skipped and the build reports the problem (an error in strict mode), except
  Triton on CPU with ``TRITON_INTERPRET=1``, which runs in the Triton interpreter (tests).
- ``torch``: the reference ops (a pure graph rewrite where the transform has one).
"""

from __future__ import annotations

import importlib.util
import itertools
from typing import TYPE_CHECKING

import torch
from torch.fx import GraphModule

from ....utils.logger import logger
from ...interface import TransformInfo

if TYPE_CHECKING:
    from ...base import BaseTransform
    from ...interface import SharedConfig


def backend_description(torch_meaning: str, others: str = "") -> str:
    """The ``backend`` field's description; ``torch_meaning``: what 'torch' does here."""
    return (
        f"Kernel backend: 'auto' (Triton on CUDA; off CUDA the transform is skipped), 'triton'"
        f"{others}, 'torch' ({torch_meaning}). An explicit GPU backend off CUDA is reported as "
        "a build problem (Triton on CPU runs only with TRITON_INTERPRET=1, for tests)."
    )


UNCHANGED = TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)


def op_registered(name: str) -> bool:
    return hasattr(torch.ops.auto_deploy, name)


def check_backend_installed(backend: str, needs_op: dict[str, str]) -> str:
    """Pydantic validator body: an explicit backend must have its op registered."""
    op = needs_op.get(backend)
    if op is not None and not op_registered(op):
        package = {"triton": "triton", "flashinfer": "flashinfer-python"}.get(backend, backend)
        raise ValueError(
            f"backend {backend!r} is not available: its op auto_deploy::{op} is not registered "
            f"(is {package!r} installed? pip install {package}). Use backend 'auto' or 'torch'."
        )
    return backend


def graph_device(gm: GraphModule, cm_device: torch.device | str | None) -> torch.device:
    """Where the graph runs: the device of its weights (``load_weights`` put them there)."""
    for tensor in itertools.chain(gm.parameters(), gm.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device(cm_device or "cpu")


def _triton_runs_on_cpu() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    from ....custom_ops._triton_kernel import cpu_interpreter_enabled

    return cpu_interpreter_enabled()


def resolve_backend(
    transform: BaseTransform,
    requested: str,
    device: torch.device,
    shared_config: SharedConfig,
) -> str | None:
    """The backend to use on ``device``; ``None``: leave the graph alone (reason logged)."""
    if requested == "torch":
        return "torch"
    if requested == "auto":
        if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
            return "triton"
        logger.info(
            "skipped: the graph runs on %s and backend 'auto' uses the fused kernels only on "
            "CUDA (with triton installed); the reference ops stay",
            device,
        )
        return None
    if device.type == "cuda" or (
        requested == "triton" and device.type == "cpu" and _triton_runs_on_cpu()
    ):
        return requested
    hint = " or set TRITON_INTERPRET=1 (Triton interpreter, tests only)"
    hint = hint if requested == "triton" else ""
    transform.report_problem(
        shared_config,
        f"backend {requested!r} needs a CUDA device but the graph runs on {device}; the "
        f"reference ops stay. Use backend 'auto' or 'torch'{hint}.",
    )
    return None
