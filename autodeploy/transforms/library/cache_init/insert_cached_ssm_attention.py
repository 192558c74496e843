"""insert_cached_ssm_attention: ``torch_ssm`` becomes a backend's cached SSM op (per-slot state)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from torch.fx import GraphModule

from ....custom_ops.mamba.descriptor import SSMRegistry
from ....utils.suggest import did_you_mean
from ...interface import TransformConfig
from ...registry import TransformRegistry
from .insert_cached_attention import AUTO, InsertCachedAttention


def resolve_state_backend(registry: Any, name: str, device: Any) -> str:
    """``auto``: the Triton kernels on CUDA, the torch reference elsewhere."""
    if name != AUTO:
        return name
    on_cuda = getattr(device, "type", str(device)).startswith("cuda")
    return "triton" if on_cuda and registry.has("triton") else "torch"


def check_backend_name(registry: Any, value: str) -> str:
    if value != AUTO and not registry.has(value):
        known = [AUTO, *registry.names()]
        raise ValueError(
            f"unknown {registry.kind} {value!r}.{did_you_mean(value, known)} "
            f"Choices: {', '.join(known)}"
        )
    return value


class InsertCachedSSMConfig(TransformConfig):
    backend: str = Field(
        default=AUTO,
        description="SSM backend: 'torch' (reference), 'triton'; 'auto': triton on CUDA, torch "
        "elsewhere.",
    )
    requires_shape_prop: bool = Field(
        default=True, description="Run shape propagation first: the state shape is read from it."
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return check_backend_name(SSMRegistry, value)


@TransformRegistry.register("insert_cached_ssm_attention")
class InsertCachedSSMAttention(InsertCachedAttention):
    """Replace every ``torch_ssm`` by the backend's cached SSM op; register one state cache per
    mixer layer.

    before: ``y = torch_ssm(x, A, B, C, D, dt, dt_bias, time_step_limit, chunk_size)``
    after:  ``y = torch_cached_ssm(x, A, B, C, D, dt, dt_bias, batch_info_host, cu_seqlen,
            input_pos, slot_idx, ssm_state_<i>, time_step_limit, chunk_size)`` with
            ``ssm_state_<i>``: [slots, heads, head_dim, state] in ``mamba_ssm_cache_dtype``.
    """

    config: InsertCachedSSMConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return InsertCachedSSMConfig

    @classmethod
    def lookup_backend(cls, name: str, device: Any) -> Any:
        return SSMRegistry.get(resolve_state_backend(SSMRegistry, name, device))

    @classmethod
    def missing_is_expected(cls, gm: GraphModule) -> bool:
        return True  # most models have no SSM layer
