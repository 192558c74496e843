"""Cached-op families: the calling convention (declared once) and ``CachedOpDescriptor``.

A cached family (``attention``; ``ssm``, ``causal_conv`` and plugins' families the same way)
replaces a canonical source op by a backend's cached op that reads the step's batch metadata
and a cache (paged KV pages, or one state per sequence slot). Its ``CallingConvention`` says,
once for every backend, how the cached op is called:

    cached_op(*inputs, *metadata, *prepared, *caches, *constants)

- ``inputs``: per-node tensors taken from the source op (attention: q, k, v);
- ``metadata``: ``SequenceInfo`` args by name, one graph input each, shared by all layers
  (those ending in ``_host`` are host tensors, read by Python code outside the kernels);
- ``prepared``: the outputs of the backend's prepare-metadata op (inserted once per graph), named
  by the backend (``CachedOpDescriptor.prepared_args``; empty for most backends);
- ``caches``: one graph input per node and resource (``CachedOpDescriptor.get_cache_initializers``);
- ``constants``: per-node values taken from the source op (scale, window, ...).

The output has the shape and dtype of the input named ``output_like``, which is all a fake
needs: ``register_convention_fake(op, convention)`` gives every backend's op that fake
(``define_cached_op`` also takes the op's schema from the convention), and
``convention_problems(descriptor)`` checks a backend's op schema and fake against the convention
(``tests/custom_ops/test_calling_convention.py`` runs it for every registered backend).

The generic insertion routine (``transforms/library/cache_init/_cached_op_insertion.py``) uses
only what this module declares; a family's transform (``insert_cached_attention``) is a thin
wrapper over it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import Node

from ..shim.resources import ResourceHandler
from ..utils.errors import ConfigError
from ..utils.node_args import bound_args, node_val
from .backend_resolver import UnsupportedOpError
from .op_backend import OpBackend


@dataclass(frozen=True)
class CallingConvention:
    """How every backend's cached op of one family is called (see the module docstring)."""

    source_op: str  # the canonical op replaced: "torch_attention" or "namespace::name"
    inputs: tuple[str, ...]
    metadata: tuple[str, ...]
    caches: tuple[str, ...]
    constants: tuple[str, ...]
    output_like: str  # the input whose shape and dtype the output has
    # Schema types of the constants ("float?", "SymInt?", "Tensor?", "float"); "?" ones
    # default to None. Needed only to define ops from the convention (``define_cached_op``).
    constant_types: tuple[str, ...] = ()

    def arg_names(self, prepared: tuple[str, ...] = ()) -> tuple[str, ...]:
        return self.inputs + self.metadata + prepared + self.caches + self.constants

    def schema(self, prepared: tuple[str, ...] = ()) -> str:
        """The op schema every backend's cached op has (caches are mutated in place)."""
        if len(self.constant_types) != len(self.constants):
            raise ConfigError(
                f"CallingConvention of {self.source_op}: constant_types must give one schema "
                f"type per constant {self.constants} to define ops from the convention."
            )
        tensors = [f"Tensor {n}" for n in self.inputs + self.metadata + prepared]
        caches = [f"Tensor(a{i}!) {n}" for i, n in enumerate(self.caches)]
        constants = [
            f"{t} {n}" + ("=None" if t.endswith("?") else "")
            for t, n in zip(self.constant_types, self.constants)
        ]
        return "(" + ", ".join(tensors + caches + constants) + ") -> Tensor"

    def source(self) -> Any:
        """The source op (None while it is not registered)."""
        namespace, _, name = self.source_op.rpartition("::")
        return getattr(getattr(torch.ops, namespace or "auto_deploy"), name, None)

    @property
    def host_args(self) -> tuple[str, ...]:
        return tuple(name for name in self.metadata if name.endswith("_host"))


def op_schema(op: Any) -> torch.FunctionSchema:
    """The schema of an op overload, or of the default overload of an overload packet."""
    if isinstance(op, torch._ops.OpOverloadPacket):
        op = op.default
    return op._schema


def register_convention_fake(op: Any, convention: CallingConvention) -> Callable[..., Any]:
    """Give ``op`` (a ``torch.library.custom_op``, or an op defined from a schema) the family's
    fake: an empty tensor like the ``output_like`` input. Backends never write their own fake
    (it could drift)."""
    position = convention.inputs.index(convention.output_like)

    def fake(*args: Any, **kwargs: Any) -> torch.Tensor:
        like = args[position] if position < len(args) else kwargs[convention.output_like]
        return torch.empty_like(like)

    fake.__name__ = f"{convention.source_op}_cached_fake"
    if hasattr(op, "register_fake"):  # a torch.library.custom_op
        op.register_fake(fake)
    else:  # an op defined from a schema string (torch.library.define)
        torch.library.register_fake(_op_name(op))(fake)
    _FAKE_CONVENTIONS[_op_name(op)] = convention
    return fake


def define_cached_op(
    qualname: str,
    impl: Callable[..., torch.Tensor],
    convention: CallingConvention,
    prepared: tuple[str, ...] = (),
) -> Any:
    """Define the custom op ``qualname`` ("namespace::name") with the convention's schema and
    fake; ``impl`` is called with the arguments in the convention's order."""
    op = torch.library.custom_op(
        qualname, impl, mutates_args=convention.caches, schema=convention.schema(prepared)
    )
    register_convention_fake(op, convention)
    return op


# op name -> the convention its fake was made from (``register_convention_fake``)
_FAKE_CONVENTIONS: dict[str, CallingConvention] = {}


def _op_name(op: Any) -> str:
    """``namespace::name`` of a custom op, an overload or an overload packet."""
    if isinstance(op, torch._ops.OpOverloadPacket):
        op = op.default
    if isinstance(op, torch._ops.OpOverload):
        return op._schema.name
    return str(getattr(op, "_qualname", op))


class CachedOpDescriptor(OpBackend):
    """A backend of a cached family: what replaces the source op and what it reads.

    Override ``get_cached_op`` (required), and where needed ``get_prepare_metadata_op`` +
    ``prepared_args``, ``get_cache_initializers``, ``get_constants``,
    ``get_host_prepare_function``, ``supports`` and ``unavailable``.
    """

    # Names of the prepare-metadata op's outputs, passed after the metadata (see the convention).
    prepared_args: tuple[str, ...] = ()
    # The error a node this backend cannot take raises (a family may narrow it).
    unsupported_error: type[UnsupportedOpError] = UnsupportedOpError

    @classmethod
    def convention(cls) -> CallingConvention:
        from .op_backend import BackendRegistry

        return BackendRegistry.family(cls.family).convention

    @classmethod
    def get_source_op(cls) -> Any:
        return cls.convention().source()

    @classmethod
    def get_cached_op(cls) -> Any:
        raise NotImplementedError(f"{cls.family} backend {cls.name()!r} has no cached op")

    @classmethod
    def get_metadata_args(cls) -> list[str]:
        return list(cls.convention().metadata)

    @classmethod
    def get_prepare_metadata_op(cls) -> tuple[Any, int] | None:
        """Optional ``(op, num_outputs)``, inserted once; its arguments are ``SequenceInfo``
        args matched by name; its outputs are ``prepared_args``."""
        return None

    @classmethod
    def get_inputs(cls, node: Node) -> list[Any]:
        args = bound_args(node)
        return [args[name] for name in cls.convention().inputs]

    @classmethod
    def get_cache_initializers(cls, node: Node, cache_config: Any) -> dict[str, ResourceHandler]:
        """``{name: handler}`` in the convention's cache order; one graph input per node each."""
        return {}

    @classmethod
    def get_constants(cls, node: Node) -> list[Any]:
        args = bound_args(node)
        return [args[name] for name in cls.convention().constants]

    @classmethod
    def get_host_prepare_function(cls) -> Callable[[Any], None] | None:
        """Optional ``fn(info)`` run on the host after every step's copy, outside CUDA graphs."""
        return None

    @classmethod
    def check_supported(cls, node: Node) -> None:
        """Raise ``unsupported_error`` when ``supports(node)`` gives a reason."""
        reason = cls.supports(node)
        if reason is not None:
            raise cls.unsupported_error(
                f"{cls.family} backend {cls.name()!r} cannot replace {node.name} "
                f"({node.format_node()}): {reason}."
            )


def input_value(node: Node, name: str) -> Any:
    """The example (fake) tensor of the source op's argument ``name`` (None without one)."""
    return node_val(bound_args(node)[name])


def convention_problems(descriptor: type[CachedOpDescriptor]) -> list[str]:
    """Where ``descriptor``'s cached op or its fake differ from the family's convention."""
    convention = descriptor.convention()
    expected = list(convention.arg_names(descriptor.prepared_args))
    op = descriptor.get_cached_op()
    schema_names = [arg.name for arg in op_schema(op).arguments]
    problems = []
    if schema_names != expected:
        problems.append(f"op {op} takes {schema_names}, the convention says {expected}")
    host_in_schema = [a.name for a in op_schema(op).arguments if a.name.endswith("_host")]
    if tuple(host_in_schema) != convention.host_args:
        problems.append(f"host args {host_in_schema} != {list(convention.host_args)}")
    if _FAKE_CONVENTIONS.get(_op_name(op)) is not convention:
        problems.append(
            f"the fake of {op} was not made by register_convention_fake(op, <the family's "
            "convention>) (a hand-written fake can drift from the convention)"
        )
    return problems
