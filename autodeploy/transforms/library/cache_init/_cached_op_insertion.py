"""The one insertion routine of every cached-op family (``insert_cached_<family>`` transforms).

``insert_cached_ops(gm, cm, family, requested)`` does, for the family's source op:

1. find every source node and resolve its backend (``backend_resolver.resolve_backend``: by
   name, or ``auto`` by device and ``supports``); every node is checked before the graph is
   touched, and a refused node is an error naming the reason;
2. add the convention's metadata as graph inputs (activated on ``cm.info``, shared by every
   node), insert each used backend's prepare-metadata op once, and register its host hook;
3. per node: register its caches with ``cm.add_resource`` (a graph input each) and replace it by
   ``cached_op(*inputs, *metadata, *prepared, *caches, *constants)``; check that op against the
   family's calling convention first.

The choices are recorded on the graph for the build summary. Caches are allocated later
(``initialize_cache``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from torch.fx import GraphModule, Node

from ....custom_ops.backend_resolver import (
    BackendChoice,
    record_choices,
    require_backend,
    resolve_backend,
)
from ....custom_ops.cached_op import CachedOpDescriptor, convention_problems, op_schema
from ....custom_ops.op_backend import BackendRegistry
from ....shim.resources import StateResourceHandler
from ....utils.errors import ConfigError, RegistryError
from ....utils.unsupported import module_of_node
from ...graph_utils import add_graph_input, find_nodes


@dataclass
class Insertion:
    """What ``insert_cached_ops`` did."""

    num_replaced: int
    source_op: Any
    choices: list[BackendChoice]


def insert_cached_ops(gm: GraphModule, cm: Any, family: str, requested: str) -> Insertion:
    """Replace every source op of ``family`` by its backend's cached op (module docstring)."""
    convention = BackendRegistry.family(family).convention
    if convention is None:
        raise ConfigError(f"op family {family!r} has no calling convention: it is not cached.")
    source_op = convention.source()
    nodes = find_nodes(gm, source_op) if source_op is not None else []
    choices = [resolve_backend(family, requested, cm.device, node) for node in nodes]
    reference = BackendRegistry.get(family, BackendRegistry.family(family).reference)
    error = getattr(reference, "unsupported_error", ConfigError)
    backends: list[type[CachedOpDescriptor]] = []
    for node, choice in zip(nodes, choices):  # every node is checked before the graph is touched
        backends.append(BackendRegistry.get(family, _required_backend(node, choice, error)))
    for backend in dict.fromkeys(backends):
        problems = convention_problems(backend)
        if problems:
            raise RegistryError(
                f"{family} backend {backend.name()!r} breaks the family's calling convention: "
                + "; ".join(problems)
            )

    if not nodes:  # nothing to cache: no graph inputs, no active batch args
        return Insertion(num_replaced=0, source_op=source_op, choices=choices)
    metadata = [_graph_input(gm, cm, name) for name in convention.metadata]
    prepared = {b: _insert_prepare_metadata(gm, cm, b) for b in dict.fromkeys(backends)}
    for node, backend in zip(nodes, backends):
        caches = []
        for key, handler in backend.get_cache_initializers(node, cm.kv_cache_config).items():
            if isinstance(handler, StateResourceHandler) and "slot_idx" not in convention.metadata:
                raise ConfigError(
                    f"{family}: a per-slot state cache is addressed by slot_idx, but the "
                    "family's calling convention does not pass slot_idx in its metadata."
                )
            unique = cm.add_resource(key, handler)
            caches.append(add_graph_input(gm, unique, handler.example(cm.info)))
        args = (
            *backend.get_inputs(node),
            *metadata,
            *prepared[backend],
            *caches,
            *backend.get_constants(node),
        )
        with gm.graph.inserting_before(node):
            cached = gm.graph.call_function(backend.get_cached_op(), args=args)
        cached.meta.update(node.meta)
        node.replace_all_uses_with(cached)
        gm.graph.erase_node(node)

    for backend in dict.fromkeys(backends):
        hook = backend.get_host_prepare_function()
        if hook is not None:
            cm.info.register_host_prepare_hook(hook)
    if cm.caches:  # initialize_cache already ran (e.g. a plugin's transform listed after it)
        cm.initialize_resources()  # allocates only the caches registered here
    record_choices(gm, choices)
    return Insertion(num_replaced=len(nodes), source_op=source_op, choices=choices)


def _required_backend(node: Node, choice: Any, error: type[Exception]) -> str:
    """The node's backend, or ``error`` naming the model's module the node came from."""
    try:
        return require_backend(choice, error)
    except error as exc:
        module = module_of_node(node)
        if module is None:
            raise
        raise error(f"{module.describe()}: {exc}") from None


def _graph_input(gm: GraphModule, cm: Any, name: str) -> Node:
    """The shared graph input for SequenceInfo arg ``name`` (activated on ``cm.info``)."""
    cm.info.activate_arg(name)
    return add_graph_input(gm, name, cm.info.get_arg(name))


def _insert_prepare_metadata(
    gm: GraphModule, cm: Any, backend: type[CachedOpDescriptor]
) -> list[Node]:
    """Insert the backend's prepare-metadata op once; return its outputs (getitem nodes)."""
    spec = backend.get_prepare_metadata_op()
    if spec is None:
        return []
    op, num_outputs = spec
    inputs = [_graph_input(gm, cm, arg.name) for arg in op_schema(op).arguments]
    last_input = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    with gm.graph.inserting_after(last_input):
        prepare = gm.graph.call_function(op, args=tuple(inputs))
    outputs = []
    anchor = prepare
    for index in range(num_outputs):
        with gm.graph.inserting_after(anchor):
            anchor = gm.graph.call_function(operator.getitem, args=(prepare, index))
        outputs.append(anchor)
    return outputs
