"""AttentionDescriptor and AttentionRegistry: how a backend's cached op replaces a canonical op.

A backend is a class of classmethods registered with ``@AttentionRegistry.register(name)``.
``insert_cached_attention`` asks it, for every source node (``torch_attention`` for the
attention backends):

- ``check_supported(node)``: raise ``UnsupportedAttentionError`` (a clear build-time error) for a
  feature the backend cannot do; never give a wrong answer at run time.
- ``get_source_attention_op()`` / ``get_attention_layout()`` / ``get_num_qkv_args()``: what is
  replaced (the layout the source op must have; the number of leading tensor args kept).
- ``get_cached_attention_op()``: called as ``op(*qkv, *standard_metadata, *extra_metadata,
  *caches, *constants)``.
- ``get_standard_metadata_args()``: ``SequenceInfo`` arg names; one graph input each, shared by
  every layer.
- ``get_prepare_metadata_op()``: optional ``(op, num_outputs)``; the op is inserted once. Its
  arguments are matched by name to ``SequenceInfo`` args; its outputs are appended (in order)
  to every cached call after the standard metadata.
- ``get_cache_initializers(node, kv_cache_config)``: ``{name: ResourceHandler}``; one graph input
  per layer and name, in this order.
- ``get_constants(node)``: the constant args appended last (scale, sliding window, logit cap,
  sinks; a sinks tensor stays a graph node).
- ``get_host_prepare_function()``: optional ``fn(info)`` run on the host after every step's
  copy, outside CUDA graphs (FlashInfer's ``plan()``).

``attention_args(node)`` reads a ``torch_attention`` call into a dict of all its arguments
(defaults filled in), which makes the per-backend code independent of how the call was written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.fx import Node

from ...shim.resources import PagedKVResourceHandler, ResourceHandler, resolve_cache_dtype
from ...shim.sequence_info import SequenceInfo
from ...utils.errors import AutoDeployError
from ...utils.node_args import bound_args
from ...utils.registry import Registry

# The contract's standard metadata for cached attention (see CACHED_ATTENTION_CONTRACT.md).
STANDARD_ATTENTION_METADATA: tuple[str, ...] = (
    "batch_info_host",
    "cu_seqlen",
    "input_pos",
    "cache_loc",
    "cu_num_pages",
)


class UnsupportedAttentionError(AutoDeployError, ValueError):
    """A source attention node uses a feature the chosen backend does not implement."""


# The arguments of an attention call by schema name (one implementation for the whole package).
attention_args = bound_args


def op_schema(op: Any) -> torch.FunctionSchema:
    """The schema of an op overload, or of the default overload of an overload packet."""
    if isinstance(op, torch._ops.OpOverloadPacket):
        op = op.default
    return op._schema


def node_tensor(value: Any) -> torch.Tensor | None:
    """The example (fake) tensor of a graph node, or None."""
    return value.meta.get("val") if isinstance(value, Node) else None


class AttentionDescriptor:
    """Base class of attention backends; the defaults describe a ``torch_attention`` backend with
    the contract's paged KV cache (override what differs)."""

    @classmethod
    def name(cls) -> str:
        return getattr(cls, "_registered_name", cls.__name__)

    @classmethod
    def get_source_attention_op(cls) -> Any:
        return torch.ops.auto_deploy.torch_attention

    @classmethod
    def get_attention_layout(cls) -> str:
        return "bsnd"

    @classmethod
    def get_num_qkv_args(cls) -> int:
        return 3

    @classmethod
    def get_cached_attention_op(cls) -> Any:
        raise NotImplementedError(f"attention backend {cls.name()!r} has no cached op")

    @classmethod
    def get_standard_metadata_args(cls) -> list[str]:
        return list(STANDARD_ATTENTION_METADATA)

    @classmethod
    def get_prepare_metadata_op(cls) -> tuple[Any, int] | None:
        return None

    @classmethod
    def get_kv_layout(cls) -> str:
        return "HND"

    @classmethod
    def get_cache_initializers(cls, node: Node, kv_cache_config: Any) -> dict[str, ResourceHandler]:
        """One paged KV cache sized from the key tensor ([b, s, n_kv, head_dim] in bsnd)."""
        args = attention_args(node)
        key = node_tensor(args["key"])
        if key is None:
            raise UnsupportedAttentionError(
                f"{node.name}: the key has no shape metadata; run shape propagation first."
            )
        dtype = resolve_cache_dtype(getattr(kv_cache_config, "dtype", "auto"), key.dtype)
        num_kv_heads, head_dim = int(key.shape[2]), int(key.shape[3])
        return {
            "kv_cache": PagedKVResourceHandler(
                num_kv_heads, head_dim, dtype, kv_layout=cls.get_kv_layout()
            )
        }

    @classmethod
    def get_constants(cls, node: Node) -> list[Any]:
        args = attention_args(node)
        return [args["scale"], args["sliding_window"], args["logit_cap"], args["sinks"]]

    @classmethod
    def get_host_prepare_function(cls) -> Callable[[SequenceInfo], None] | None:
        return None

    # ------------------------------------------------------------------ feature checks

    @classmethod
    def unsupported_features(cls, node: Node) -> list[str]:
        """What ``node`` asks for that a paged causal-attention backend cannot do."""
        args = attention_args(node)
        problems = []
        if args["layout"] != cls.get_attention_layout():
            problems.append(
                f"layout {args['layout']!r} (the backend needs {cls.get_attention_layout()!r}; "
                "the match_attention_layout transform puts attention into that layout: enable it "
                "before insert_cached_attention)"
            )
        if args["attn_mask"] is not None:
            problems.append(
                "an explicit attention mask (the cache rebuilds causal masking from the sequence "
                "metadata; custom masks cannot be expressed)"
            )
        if args["dropout_p"] not in (0, 0.0):
            problems.append(f"dropout_p={args['dropout_p']} (inference needs 0.0)")
        if args["is_causal"] is not True:
            problems.append(f"is_causal={args['is_causal']} (cached attention is causal)")
        query, key, value = (node_tensor(args[k]) for k in ("query", "key", "value"))
        if query is not None and key is not None and value is not None:
            num_heads, num_kv_heads = int(query.shape[2]), int(key.shape[2])
            if args["layout"] == "bsnd" and num_heads % num_kv_heads != 0:
                problems.append(
                    f"{num_heads} query heads are not a multiple of {num_kv_heads} kv heads"
                )
            if value.shape[-1] != key.shape[-1]:
                problems.append(
                    f"value head_dim {value.shape[-1]} != key head_dim {key.shape[-1]} (K and V "
                    "share one paged cache)"
                )
        window, cap = args["sliding_window"], args["logit_cap"]
        if isinstance(window, int) and window < 1:
            problems.append(f"sliding_window={window} (must be >= 1)")
        if isinstance(cap, (int, float)) and cap <= 0:
            problems.append(f"logit_cap={cap} (must be > 0)")
        return problems

    @classmethod
    def check_supported(cls, node: Node) -> None:
        problems = cls.unsupported_features(node)
        if problems:
            raise UnsupportedAttentionError(
                f"attention backend {cls.name()!r} cannot replace {node.name} "
                f"({node.format_node()}): " + "; ".join(problems) + "."
            )


class _AttentionRegistry(Registry[type[AttentionDescriptor]]):
    def _on_register(self, name: str, obj: type[AttentionDescriptor]) -> None:
        obj._registered_name = name  # type: ignore[attr-defined]


AttentionRegistry = _AttentionRegistry(
    "attention backend", lookup_hint="Set `attn_backend` (or insert_cached_attention.backend)"
)
