"""The ``ssm`` and ``causal_conv`` op families: calling conventions and descriptors.

Every backend's cached op of each family is called (``cached_op.py`` explains the parts) as

    ssm:         op(hidden_states, A, B, C, D, dt, dt_bias,          # inputs of torch_ssm
                    batch_info_host, cu_seqlen, input_pos, slot_idx,  # metadata
                    ssm_state,                 # [slots, heads, head_dim, state], one per layer
                    time_step_limit, chunk_size)                      # constants

    causal_conv: op(x, weight, bias,                                  # torch_causal_conv1d inputs
                    batch_info_host, cu_seqlen, input_pos, slot_idx,
                    conv_state,                # [slots, channels, kernel_size - 1]
                    activation)

Both caches are ``StateResourceHandler``s (one slot per running sequence plus the spare slot for
CUDA-graph padding, addressed by ``slot_idx``). The SSM state's dtype is
``kv_cache_config.mamba_ssm_cache_dtype`` (default float32); the conv state follows
``kv_cache_config.dtype`` (default: the model's dtype).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import Node

from ...shim.resources import ResourceHandler, StateResourceHandler, resolve_cache_dtype
from ..cached_op import CachedOpDescriptor, CallingConvention, input_value
from ..op_backend import BackendRegistry, FamilyRegistry, OpFamily

STATE_METADATA = ("batch_info_host", "cu_seqlen", "input_pos", "slot_idx")

SSM = BackendRegistry.register_family(
    OpFamily(
        name="ssm",
        description="Mamba-2 state-space scan over a per-slot state (replaces torch_ssm)",
        setting="insert_cached_ssm_attention.backend",
        convention=CallingConvention(
            source_op="torch_ssm",
            inputs=("hidden_states", "A", "B", "C", "D", "dt", "dt_bias"),
            metadata=STATE_METADATA,
            caches=("ssm_state",),
            constants=("time_step_limit", "chunk_size"),
            output_like="hidden_states",
        ),
    )
)
CAUSAL_CONV = BackendRegistry.register_family(
    OpFamily(
        name="causal_conv",
        description="causal depthwise conv1d over a per-slot state (replaces torch_causal_conv1d)",
        setting="insert_cached_causal_conv.backend",
        convention=CallingConvention(
            source_op="torch_causal_conv1d",
            inputs=("x", "weight", "bias"),
            metadata=STATE_METADATA,
            caches=("conv_state",),
            constants=("activation",),
            output_like="x",
        ),
    )
)
SSMRegistry = FamilyRegistry(SSM.name)
CausalConvRegistry = FamilyRegistry(CAUSAL_CONV.name)


def _shape(node: Node, name: str) -> tuple[int, ...]:
    value = input_value(node, name)
    if value is None:
        raise ValueError(f"{node.name}: {name} has no shape metadata; run shape propagation.")
    return tuple(int(d) for d in value.shape)


class SSMDescriptor(CachedOpDescriptor):
    """An ``ssm`` backend: its state cache is ``[slots, heads, head_dim, state]``."""

    @classmethod
    def get_cache_initializers(cls, node: Node, cache_config: Any) -> dict[str, ResourceHandler]:
        _, _, num_heads, head_dim = _shape(node, "hidden_states")
        state_size = _shape(node, "B")[3]
        model_dtype = input_value(node, "hidden_states").dtype
        setting = getattr(cache_config, "mamba_ssm_cache_dtype", "float32")
        dtype = resolve_cache_dtype(setting, model_dtype)
        return {"ssm_state": StateResourceHandler(num_heads, head_dim, state_size, dtype=dtype)}


class CausalConvDescriptor(CachedOpDescriptor):
    """A ``causal_conv`` backend: its state is the last ``kernel_size - 1`` inputs per channel."""

    @classmethod
    def get_cache_initializers(cls, node: Node, cache_config: Any) -> dict[str, ResourceHandler]:
        channels, kernel_size = _shape(node, "x")[2], _shape(node, "weight")[-1]
        model_dtype = input_value(node, "x").dtype
        dtype = resolve_cache_dtype(getattr(cache_config, "dtype", "auto"), model_dtype)
        return {"conv_state": StateResourceHandler(channels, kernel_size - 1, dtype=dtype)}


@SSMRegistry.register("torch")
class TorchCachedSSM(SSMDescriptor):
    """Reference: chunked scan per prefill sequence, one recurrent step for the decodes; any
    device."""

    auto_priority = {"*": 0}

    @classmethod
    def get_cached_op(cls) -> Any:
        return torch.ops.auto_deploy.torch_cached_ssm


@CausalConvRegistry.register("torch")
class TorchCachedCausalConv(CausalConvDescriptor):
    """Reference: ``F.conv1d`` over [state, new inputs]; any device."""

    auto_priority = {"*": 0}

    @classmethod
    def get_cached_op(cls) -> Any:
        return torch.ops.auto_deploy.torch_cached_causal_conv1d
