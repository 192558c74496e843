"""insert_cached_causal_conv: ``torch_causal_conv1d`` becomes a backend's cached conv op."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from torch.fx import GraphModule

from ....custom_ops.mamba.descriptor import CausalConvRegistry
from ...interface import TransformConfig
from ...registry import TransformRegistry
from .insert_cached_attention import AUTO, InsertCachedAttention
from .insert_cached_ssm_attention import check_backend_name, resolve_state_backend


class InsertCachedCausalConvConfig(TransformConfig):
    backend: str = Field(
        default=AUTO,
        description="Causal conv backend: 'torch' (reference), 'triton'; 'auto': triton on "
        "CUDA, torch elsewhere.",
    )
    requires_shape_prop: bool = Field(
        default=True, description="Run shape propagation first: the state shape is read from it."
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return check_backend_name(CausalConvRegistry, value)


@TransformRegistry.register("insert_cached_causal_conv")
class InsertCachedCausalConv(InsertCachedAttention):
    """Replace every ``torch_causal_conv1d`` by the backend's cached conv op; register one conv
    state per mixer layer.

    before: ``y = torch_causal_conv1d(x, weight, bias, activation)``
    after:  ``y = torch_cached_causal_conv1d(x, weight, bias, batch_info_host, cu_seqlen,
            input_pos, slot_idx, conv_state_<i>, activation)`` with ``conv_state_<i>``:
            [slots, channels, kernel_size - 1].
    """

    config: InsertCachedCausalConvConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return InsertCachedCausalConvConfig

    @classmethod
    def lookup_backend(cls, name: str, device: Any) -> Any:
        return CausalConvRegistry.get(resolve_state_backend(CausalConvRegistry, name, device))

    @classmethod
    def missing_is_expected(cls, gm: GraphModule) -> bool:
        return True  # most models have no causal conv
