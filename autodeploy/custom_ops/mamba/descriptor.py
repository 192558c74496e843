"""Cached-op descriptors of the two Mamba op families, ``ssm`` and ``causal_conv``.

They follow the attention descriptor's interface (``custom_ops/attention/descriptor.py``), so the
one insertion routine of ``insert_cached_attention`` replaces their source ops:

    torch_ssm(x, A, B, C, D, dt, dt_bias, time_step_limit, chunk_size)
    -> <backend>_cached_ssm(x, A, B, C, D, dt, dt_bias,
                            batch_info_host, cu_seqlen, input_pos, slot_idx,
                            ssm_state [slots, heads, head_dim, state], time_step_limit, chunk_size)

    torch_causal_conv1d(x, weight, bias, activation)
    -> <backend>_cached_causal_conv1d(x, weight, bias,
                            batch_info_host, cu_seqlen, input_pos, slot_idx,
                            conv_state [slots, channels, kernel_size - 1], activation)

Both caches are ``StateResourceHandler``s: one slot per running sequence plus the spare slot.
The SSM state's dtype is ``kv_cache_config.mamba_ssm_cache_dtype`` (default float32); the conv
state keeps the model's dtype (``kv_cache_config.dtype``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import Node

from ...shim.resources import ResourceHandler, StateResourceHandler, resolve_cache_dtype
from ...utils.node_args import bound_args
from ...utils.registry import Registry
from ..attention.descriptor import AttentionDescriptor, UnsupportedAttentionError, node_tensor

STATE_METADATA: tuple[str, ...] = ("batch_info_host", "cu_seqlen", "input_pos", "slot_idx")


def _example(node: Node, name: str) -> torch.Tensor:
    tensor = node_tensor(bound_args(node)[name])
    if tensor is None:
        raise UnsupportedAttentionError(
            f"{node.name}: {name} has no shape metadata; run shape propagation first."
        )
    return tensor


class StateCacheDescriptor(AttentionDescriptor):
    """What the two state families share: the metadata they read and no feature checks (every
    ``torch_ssm`` / ``torch_causal_conv1d`` call is supported)."""

    @classmethod
    def get_standard_metadata_args(cls) -> list[str]:
        return list(STATE_METADATA)

    @classmethod
    def unsupported_features(cls, node: Node) -> list[str]:
        return []


class SSMDescriptor(StateCacheDescriptor):
    """Replaces ``torch_ssm``; the cached op is set by each backend."""

    @classmethod
    def get_source_attention_op(cls) -> Any:
        return torch.ops.auto_deploy.torch_ssm

    @classmethod
    def get_num_qkv_args(cls) -> int:
        return 7  # hidden_states, A, B, C, D, dt, dt_bias

    @classmethod
    def get_cache_initializers(cls, node: Node, kv_cache_config: Any) -> dict[str, ResourceHandler]:
        x, B = _example(node, "hidden_states"), _example(node, "B")
        setting = getattr(kv_cache_config, "mamba_ssm_cache_dtype", "float32")
        dtype = resolve_cache_dtype(setting, x.dtype)
        num_heads, head_dim, state_size = int(x.shape[2]), int(x.shape[3]), int(B.shape[3])
        return {"ssm_state": StateResourceHandler(num_heads, head_dim, state_size, dtype=dtype)}

    @classmethod
    def get_constants(cls, node: Node) -> list[Any]:
        args = bound_args(node)
        return [args["time_step_limit"], args["chunk_size"]]


class CausalConvDescriptor(StateCacheDescriptor):
    """Replaces ``torch_causal_conv1d``; the cached op is set by each backend."""

    @classmethod
    def get_source_attention_op(cls) -> Any:
        return torch.ops.auto_deploy.torch_causal_conv1d

    @classmethod
    def get_num_qkv_args(cls) -> int:
        return 3  # x, weight, bias

    @classmethod
    def get_cache_initializers(cls, node: Node, kv_cache_config: Any) -> dict[str, ResourceHandler]:
        x, weight = _example(node, "x"), _example(node, "weight")
        dtype = resolve_cache_dtype(getattr(kv_cache_config, "dtype", "auto"), x.dtype)
        channels, kernel_size = int(x.shape[2]), int(weight.shape[-1])
        return {"conv_state": StateResourceHandler(channels, kernel_size - 1, dtype=dtype)}

    @classmethod
    def get_constants(cls, node: Node) -> list[Any]:
        return [bound_args(node)["activation"]]


class _StateRegistry(Registry[type[AttentionDescriptor]]):
    def _on_register(self, name: str, obj: type[AttentionDescriptor]) -> None:
        obj._registered_name = name  # type: ignore[attr-defined]


SSMRegistry = _StateRegistry("ssm backend", lookup_hint="Set insert_cached_ssm_attention.backend")
CausalConvRegistry = _StateRegistry(
    "causal conv backend", lookup_hint="Set insert_cached_causal_conv.backend"
)


@SSMRegistry.register("torch")
class TorchCachedSSM(SSMDescriptor):
    """Reference: chunked scan per prefill sequence, one recurrent step for the decodes."""

    @classmethod
    def get_cached_attention_op(cls) -> Any:
        return torch.ops.auto_deploy.torch_cached_ssm


@CausalConvRegistry.register("torch")
class TorchCachedCausalConv(CausalConvDescriptor):
    """Reference: F.conv1d over [state, new inputs] per prefill sequence and for the decodes."""

    @classmethod
    def get_cached_attention_op(cls) -> Any:
        return torch.ops.auto_deploy.torch_cached_causal_conv1d
