"""The ``attention`` op family: its calling convention and ``AttentionDescriptor``.

Every attention backend's cached op is called (``cached_op.py`` explains the parts) as

    op(q, k, v,                                            # inputs, [b, s, heads, head_dim]
       batch_info_host, cu_seqlen, input_pos, cache_loc, cu_num_pages,   # metadata
       *prepared,                                          # the backend's prepare-op outputs
       kv_cache,                                           # one paged cache per layer
       scale, sliding_window, logit_cap, sinks)            # constants of the source call

and replaces ``torch_attention`` (layout ``bsnd``). A backend is an ``AttentionDescriptor``
subclass registered with ``@AttentionRegistry.register(name)`` (the ``attention`` family of
``BackendRegistry``). Its build-time check ``supports(node)`` and its op's run-time check use the
same function (``attention_checks.attention_problems``) with the backend's ``limits``.

``attention_args(node)`` reads a ``torch_attention`` call into a dict of all its arguments
(defaults filled in), which makes the per-backend code independent of how the call was written.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch.fx import Node

from ...shim.resources import PagedKVResourceHandler, ResourceHandler, resolve_cache_dtype
from ...utils.node_args import bound_args, node_val
from ..backend_resolver import UnsupportedOpError
from ..cached_op import CachedOpDescriptor, CallingConvention, op_schema
from ..op_backend import BackendRegistry, FamilyRegistry, OpFamily
from .attention_checks import REFERENCE_LIMITS, AttentionLimits, attention_problems

ATTENTION_CONVENTION = CallingConvention(
    source_op="torch_attention",
    inputs=("q", "k", "v"),
    metadata=("batch_info_host", "cu_seqlen", "input_pos", "cache_loc", "cu_num_pages"),
    caches=("kv_cache",),
    constants=("scale", "sliding_window", "logit_cap", "sinks"),
    output_like="q",
    constant_types=("float?", "SymInt?", "float?", "Tensor?"),
)
# The source op's names for the convention's inputs and constants.
_SOURCE_INPUTS = ("query", "key", "value")

ATTENTION = BackendRegistry.register_family(
    OpFamily(
        name="attention",
        description="causal attention over a paged KV cache (replaces torch_attention)",
        setting="attn_backend (or insert_cached_attention.backend)",
        convention=ATTENTION_CONVENTION,
    )
)
AttentionRegistry = FamilyRegistry("attention")

# The contract's standard metadata for cached attention (kept for callers that import it).
STANDARD_ATTENTION_METADATA: tuple[str, ...] = ATTENTION_CONVENTION.metadata

__all__ = ["AttentionDescriptor", "AttentionRegistry", "attention_args", "op_schema"]


class UnsupportedAttentionError(UnsupportedOpError):
    """A source attention node uses a feature the chosen backend does not implement."""


# The arguments of an attention call by schema name (one implementation for the whole package).
attention_args = bound_args


class AttentionDescriptor(CachedOpDescriptor):
    """Base class of attention backends; the defaults describe a backend of the contract's
    paged KV cache that takes every ``torch_attention`` feature (override what differs)."""

    unsupported_error = UnsupportedAttentionError
    limits: ClassVar[AttentionLimits] = REFERENCE_LIMITS
    kv_layout: ClassVar[str] = "HND"

    # The names this family used before the generic descriptor (kept: tests and plugins use them).
    @classmethod
    def get_source_attention_op(cls) -> Any:
        return cls.get_source_op()

    @classmethod
    def get_cached_attention_op(cls) -> Any:
        return cls.get_cached_op()

    @classmethod
    def get_cached_op(cls) -> Any:
        raise NotImplementedError(f"attention backend {cls.name()!r} has no cached op")

    @classmethod
    def get_standard_metadata_args(cls) -> list[str]:
        return cls.get_metadata_args()

    @classmethod
    def get_attention_layout(cls) -> str:
        return "bsnd"

    @classmethod
    def get_inputs(cls, node: Node) -> list[Any]:
        args = attention_args(node)
        return [args[name] for name in _SOURCE_INPUTS]

    @classmethod
    def get_cache_initializers(cls, node: Node, kv_cache_config: Any) -> dict[str, ResourceHandler]:
        """One paged KV cache sized from the key tensor ([b, s, n_kv, head_dim] in bsnd)."""
        key = node_val(attention_args(node)["key"])
        if key is None:
            raise UnsupportedAttentionError(
                f"{node.name}: the key has no shape metadata; run shape propagation first."
            )
        dtype = resolve_cache_dtype(getattr(kv_cache_config, "dtype", "auto"), key.dtype)
        num_kv_heads, head_dim = int(key.shape[2]), int(key.shape[3])
        handler = PagedKVResourceHandler(num_kv_heads, head_dim, dtype, kv_layout=cls.kv_layout)
        return {"kv_cache": handler}

    # ------------------------------------------------------------------ feature checks

    @classmethod
    def unsupported_features(cls, node: Node) -> list[str]:
        """What ``node`` asks for that this backend cannot do (the build-time check)."""
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
        query, key, value = (node_val(args[name]) for name in _SOURCE_INPUTS)
        if args["layout"] != "bsnd":  # the shape checks read bsnd tensors
            query = key = value = None
        problems += attention_problems(
            cls.limits,
            query,
            key,
            value,
            sliding_window=args["sliding_window"],
            logit_cap=args["logit_cap"],
            sinks=args["sinks"],
        )
        return problems

    @classmethod
    def supports(cls, node: Node) -> str | None:
        problems = cls.unsupported_features(node)
        return "; ".join(problems) if problems else None
