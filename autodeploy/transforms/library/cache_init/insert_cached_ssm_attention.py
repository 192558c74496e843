"""insert_cached_ssm_attention: ``torch_ssm`` becomes a backend's cached SSM op (per-slot state)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator
from torch.fx import GraphModule

from ....custom_ops.mamba.descriptor import SSM
from ....custom_ops.op_backend import check_backend_name
from ....utils.errors import ConfigError
from ...base import BaseTransform
from ...facts import (
    CACHE_INTERFACE,
    CACHE_RESOURCES,
    CANONICAL_SSM,
    EXPORTED_GRAPH,
    INPUTS_ON_DEVICE,
    WEIGHTS_LOADED,
)
from ...interface import SharedConfig, Stages, TransformConfig, TransformInfo
from ...registry import TransformRegistry
from ._cached_op_insertion import insert_cached_ops

# Upstream AutoDeploy's names of the same backends (its YAML files say e.g. "triton_ssm").
UPSTREAM_BACKEND_NAMES = {
    "torch_ssm": "torch",
    "triton_ssm": "triton",
    "torch_causal_conv": "torch",
    "triton_causal_conv": "triton",
}


class StateFamilyConfig(TransformConfig):
    """Settings of an ``insert_cached_<state family>`` transform (``FAMILY``: its op family)."""

    FAMILY: ClassVar[str] = SSM.name
    backend: str = Field(
        default="auto",
        description="Backend of the op family: 'torch' (reference), 'triton'. 'auto': per node, "
        "the highest-priority backend for the device that supports it (triton on CUDA).",
    )
    requires_shape_prop: bool = Field(
        default=True, description="Run shape propagation first: the state shape is read from it."
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        value = UPSTREAM_BACKEND_NAMES.get(value, value)
        return check_backend_name(cls.FAMILY, value)


def insert_state_family(gm, cm, family: str, backend: str, transform: str):
    """The generic insertion for a per-slot state family; a graph without the source op (a
    model without Mamba layers) is left alone."""
    if cm is None:
        raise ConfigError(
            f"{transform} needs a CachedSequenceInterface: call InferenceOptimizer(factory, "
            "cfg)(cm) with one."
        )
    if not isinstance(gm, GraphModule):
        raise ConfigError(f"{transform} needs an exported GraphModule.")
    done = insert_cached_ops(gm, cm, family, backend)
    if not done.num_replaced:
        return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)
    return gm, TransformInfo(num_matches=done.num_replaced, is_clean=False, has_valid_shapes=False)


@TransformRegistry.register("insert_cached_ssm_attention")
class InsertCachedSSMAttention(BaseTransform):
    """Replace every ``torch_ssm`` by the backend's cached SSM op; one state cache per layer.

    before: ``y = torch_ssm(x, A, B, C, D, dt, dt_bias, time_step_limit, chunk_size)``
    after:  ``y = torch_cached_ssm(x, A, B, C, D, dt, dt_bias, batch_info_host, cu_seqlen,
            input_pos, slot_idx, ssm_state_<i>, time_step_limit, chunk_size)`` with
            ``ssm_state_<i>``: [slots, heads, head_dim, state] in ``mamba_ssm_cache_dtype``.
    """

    stage = Stages.CACHE_INIT
    requires = (EXPORTED_GRAPH, CACHE_INTERFACE, WEIGHTS_LOADED)
    uses = (CANONICAL_SSM, INPUTS_ON_DEVICE)
    provides = (CACHE_RESOURCES,)

    config: StateFamilyConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return StateFamilyConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        return insert_state_family(gm, cm, SSM.name, self.config.backend, self.name)
