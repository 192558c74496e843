"""fuse_moe: the canonical MoE op runs a grouped kernel (Triton on CUDA, grouped torch on CPU)."""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
from pydantic import Field, field_validator

from ....utils.logger import logger
from ...base import BaseTransform
from ...graph_utils import find_nodes, node_val
from ...interface import SharedConfig, TransformConfig, TransformInfo
from ...registry import TransformRegistry
from ._backends import UNCHANGED, check_backend_installed, graph_device, resolve_backend

ad = torch.ops.auto_deploy

KERNEL_OPS = {"triton": "triton_moe_fused", "torch": "torch_moe_grouped"}


def _triton_unsupported(node: torch.fx.Node) -> str | None:
    from ....custom_ops.moe.triton_backend import unsupported_reason

    hidden = node_val(node.args[0])
    activation = node.args[5] if len(node.args) > 5 else node.kwargs.get("activation", "silu")
    if not isinstance(hidden, torch.Tensor):
        return None  # no shape information: the kernel checks at run time
    return unsupported_reason(hidden, activation)


class FuseMoEConfig(TransformConfig):
    backend: Literal["auto", "triton", "torch"] = Field(
        default="auto",
        description="MoE kernel: 'auto' (Triton on CUDA, 'torch' elsewhere), 'triton' (fused "
        "grouped GEMMs; off CUDA only with TRITON_INTERPRET=1, for tests; a build problem "
        "otherwise), 'torch' (torch_moe_grouped: each expert's GEMMs on its own tokens).",
    )

    @field_validator("backend")
    @classmethod
    def _installed(cls, value: str) -> str:
        return check_backend_installed(value, KERNEL_OPS)


@TransformRegistry.register("fuse_moe")
class FuseMoE(BaseTransform):
    """Canonical MoE runs a kernel that computes only the routed experts (same arguments).

    before: ``out = auto_deploy.torch_moe(x, selected, weights, gate_up, down, act)`` (dense
            reference: every expert on every token)
    after:  ``out = auto_deploy.triton_moe_fused(...)`` on CUDA, or
            ``auto_deploy.torch_moe_grouped(...)`` (same arguments and result)
    MoE ops the Triton kernel cannot take (activation, dtype) get the grouped torch op.
    """

    config: FuseMoEConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return FuseMoEConfig

    def _backend(self, device: torch.device, shared_config: SharedConfig) -> str | None:
        if self.config.backend != "auto":
            return resolve_backend(self, self.config.backend, device, shared_config)
        has_triton = importlib.util.find_spec("triton") is not None
        return "triton" if device.type == "cuda" and has_triton else "torch"

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        nodes = find_nodes(gm, ad.torch_moe)
        if not nodes:
            return gm, UNCHANGED
        device = graph_device(gm, cm.device if cm is not None else None)
        backend = self._backend(device, shared_config)
        if backend is None:
            return gm, UNCHANGED
        for node in nodes:
            chosen = backend
            reason = _triton_unsupported(node) if backend == "triton" else None
            if reason is not None:
                logger.info("%s runs torch_moe_grouped: the Triton kernel lacks %s", node, reason)
                chosen = "torch"
            # Same arguments and output; the fake value stays valid.
            node.target = getattr(ad, KERNEL_OPS[chosen]).default
        logger.info("%d MoE ops now run %s", len(nodes), KERNEL_OPS[backend])
        return gm, TransformInfo(
            skipped=False, num_matches=len(nodes), is_clean=False, has_valid_shapes=True
        )
