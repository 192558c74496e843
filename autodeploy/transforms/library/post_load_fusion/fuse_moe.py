"""fuse_moe: the canonical MoE op runs a grouped kernel (Triton on CUDA, grouped torch on CPU)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from ....custom_ops.op_backend import BackendRegistry
from ....utils.logger import logger
from ...base import BaseTransform
from ...facts import CANONICAL_MOE, EXPORTED_GRAPH, INPUTS_ON_DEVICE, WEIGHTS_LOADED
from ...graph_utils import find_nodes
from ...interface import SharedConfig, Stages, TransformConfig, TransformInfo
from ...registry import TransformRegistry
from ._backends import UNCHANGED, check_backend_installed, node_backends

ad = torch.ops.auto_deploy


class FuseMoEConfig(TransformConfig):
    backend: Literal["auto", "triton", "torch_grouped", "torch"] = Field(
        default="auto",
        description="MoE kernel (op family 'moe'): 'auto' (Triton on CUDA, else "
        "'torch_grouped'), 'triton' (tokens sorted by expert, grouped GEMMs; off CUDA only "
        "with TRITON_INTERPRET=1, for tests, else a build problem), 'torch_grouped' "
        "(torch_moe_grouped: each expert's GEMMs on its own tokens), 'torch' (keep the dense "
        "reference torch_moe).",
    )

    @field_validator("backend")
    @classmethod
    def _installed(cls, value: str) -> str:
        return check_backend_installed("moe", value)


@TransformRegistry.register("fuse_moe")
class FuseMoE(BaseTransform):
    """Canonical MoE runs a kernel that computes only the routed experts (same arguments).

    before: ``out = auto_deploy.torch_moe(x, selected, weights, gate_up, down, act)`` (dense
            reference: every expert on every token)
    after:  ``out = auto_deploy.triton_moe_fused(...)`` on CUDA, or
            ``auto_deploy.torch_moe_grouped(...)`` (same arguments and result)
    The backend of each node comes from the shared resolver (family ``moe``): with ``auto``, a
    node the Triton kernel cannot take (activation, dtype) gets ``torch_moe_grouped``.
    ``backend: torch`` leaves the graph as it is.
    """

    stage = Stages.POST_LOAD_FUSION
    requires = (EXPORTED_GRAPH, WEIGHTS_LOADED)
    uses = (CANONICAL_MOE, INPUTS_ON_DEVICE)

    config: FuseMoEConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return FuseMoEConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        nodes = find_nodes(gm, ad.torch_moe)
        if not nodes:
            return gm, UNCHANGED
        backends = node_backends(self, "moe", self.config.backend, gm, cm, nodes, shared_config)
        swapped = 0
        for node, backend in zip(nodes, backends):
            if backend is None or backend == "torch":
                continue
            # Same arguments and output; the fake value stays valid.
            node.target = BackendRegistry.get("moe", backend).op()
            swapped += 1
        logger.info("%d of %d MoE ops now run a grouped kernel", swapped, len(nodes))
        return gm, TransformInfo(
            skipped=swapped == 0, num_matches=swapped, is_clean=swapped == 0, has_valid_shapes=True
        )
