"""fuse_rmsnorm: canonical RMSNorm runs in a Triton or FlashInfer kernel."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from ....custom_ops.op_backend import BackendRegistry
from ....utils.logger import logger
from ...base import BaseTransform
from ...graph_utils import find_nodes
from ...interface import SharedConfig, TransformConfig, TransformInfo
from ...registry import TransformRegistry
from ._backends import UNCHANGED, backend_description, check_backend_installed, node_backends

ad = torch.ops.auto_deploy


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
        return check_backend_installed("rms_norm", value)


@TransformRegistry.register("fuse_rmsnorm")
class FuseRMSNorm(BaseTransform):
    """Canonical RMSNorm runs in a kernel of the chosen backend (same semantics, same node).

    before: ``out = auto_deploy.torch_rmsnorm(x, weight, eps)``
    after:  ``out = auto_deploy.triton_rmsnorm(x, weight, eps)`` (or ``flashinfer_rmsnorm``)
    Norms the backend's ``supports`` refuses (Triton: hidden size over its limit; FlashInfer:
    float32) keep the reference op.
    ``backend: torch`` leaves the graph as it is.
    """

    config: FuseRMSNormConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return FuseRMSNormConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        nodes = find_nodes(gm, ad.torch_rmsnorm)
        if not nodes:
            return gm, UNCHANGED
        backends = node_backends(
            self, "rms_norm", self.config.backend, gm, cm, nodes, shared_config
        )
        swapped = 0
        for node, backend in zip(nodes, backends):
            if backend is None or backend == "torch":
                continue
            # same arguments and outputs; the fake value stays valid
            node.target = BackendRegistry.get("rms_norm", backend).op("rmsnorm")
            swapped += 1
        if swapped < len(nodes):
            logger.info("%d of %d RMSNorm ops now run a kernel backend", swapped, len(nodes))
        # is_clean=False: the generated code must be regenerated for the new targets.
        return gm, TransformInfo(
            skipped=swapped == 0,
            num_matches=swapped,
            is_clean=swapped == 0,
            has_valid_shapes=True,
        )
