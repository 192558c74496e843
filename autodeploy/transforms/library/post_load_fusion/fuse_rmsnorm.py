"""fuse_rmsnorm: canonical RMSNorm runs in a Triton or FlashInfer kernel."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from ....utils.logger import logger
from ...base import BaseTransform
from ...facts import CANONICAL_RMSNORM, EXPORTED_GRAPH, INPUTS_ON_DEVICE, WEIGHTS_LOADED
from ...graph_utils import find_nodes, node_val
from ...interface import SharedConfig, Stages, TransformConfig, TransformInfo
from ...registry import TransformRegistry
from ._backends import (
    UNCHANGED,
    backend_description,
    check_backend_installed,
    graph_device,
    resolve_backend,
)

ad = torch.ops.auto_deploy

KERNEL_OPS = {"triton": "triton_rmsnorm", "flashinfer": "flashinfer_rmsnorm"}
TRITON_MAX_HIDDEN = 16384  # one row per program (custom_ops/rms_norm/triton_backend.py)


def _unsupported(backend: str, x: object) -> str | None:
    """Why the backend's kernel cannot take this input (None: it can)."""
    if not isinstance(x, torch.Tensor):
        return None  # no shape information: the kernel checks at run time
    if backend == "triton" and x.shape[-1] > TRITON_MAX_HIDDEN:
        return f"hidden size {x.shape[-1]} > {TRITON_MAX_HIDDEN}"
    if backend == "flashinfer" and x.dtype not in (torch.float16, torch.bfloat16):
        return f"FlashInfer normalizes float16/bfloat16, not {x.dtype}"
    return None


class FuseRMSNormConfig(TransformConfig):
    backend: Literal["auto", "triton", "flashinfer", "torch"] = Field(
        default="auto",
        description=backend_description(
            "keep torch_rmsnorm", ", 'flashinfer' (needs flashinfer-python)"
        ),
    )

    @field_validator("backend")
    @classmethod
    def _installed(cls, value: str) -> str:
        return check_backend_installed(value, KERNEL_OPS)


@TransformRegistry.register("fuse_rmsnorm")
class FuseRMSNorm(BaseTransform):
    """Canonical RMSNorm runs in a kernel of the chosen backend (same semantics, same node).

    before: ``out = auto_deploy.torch_rmsnorm(x, weight, eps)``
    after:  ``out = auto_deploy.triton_rmsnorm(x, weight, eps)`` (or ``flashinfer_rmsnorm``)
    Norms the kernel cannot take (Triton: hidden size > 16384; FlashInfer: float32) keep the
    reference op.
    ``backend: torch`` leaves the graph as it is.
    """

    stage = Stages.POST_LOAD_FUSION
    requires = (EXPORTED_GRAPH, WEIGHTS_LOADED)
    uses = (CANONICAL_RMSNORM, INPUTS_ON_DEVICE)
    failure_hint = "Set `backend: torch` to keep the reference op."

    config: FuseRMSNormConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return FuseRMSNormConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        nodes = find_nodes(gm, ad.torch_rmsnorm)
        if not nodes:
            return gm, UNCHANGED
        device = graph_device(gm, cm.device if cm is not None else None)
        backend = resolve_backend(self, self.config.backend, device, shared_config)
        if backend is None or backend == "torch":
            return gm, UNCHANGED
        kernel = getattr(ad, KERNEL_OPS[backend]).default
        swapped = 0
        for node in nodes:
            reason = _unsupported(backend, node_val(node.args[0]))
            if reason is not None:
                logger.info("%s keeps torch_rmsnorm: %s", node.name, reason)
                continue
            node.target = kernel  # same arguments and outputs; the fake value stays valid
            swapped += 1
        if swapped < len(nodes):
            logger.info("%d of %d RMSNorm ops now run %s", swapped, len(nodes), backend)
        # is_clean=False: the generated code must be regenerated for the new targets.
        return gm, TransformInfo(
            skipped=swapped == 0,
            num_matches=swapped,
            is_clean=swapped == 0,
            has_valid_shapes=True,
        )
