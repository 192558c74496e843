"""Tracing search functions into pattern graphs, and merging traces into literal rules."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.fx import Graph, Node
from torch.fx.experimental.proxy_tensor import make_fx

from .nodes import bound_args, is_check, noise_input, normalize_dims, strip_noise, target_key

ANY = object()  # literal rule: matches anything


@dataclasses.dataclass(frozen=True)
class Scalar:
    name: str


@dataclasses.dataclass
class PatternGraph:
    """One traced variant of a search function (noise removed)."""

    graph: Graph
    output: Node
    arg_names: dict[str, str]  # placeholder node name -> search-function argument name
    fixed: dict[str, Any]  # non-float, non-tensor arguments of this variant
    rules: dict[tuple[str, tuple[Any, ...]], Any] = dataclasses.field(default_factory=dict)

    def rule(self, node: Node, path: tuple[Any, ...], literal: Any) -> Any:
        return self.rules.get((node.name, path), literal)


_SENTINEL_BASE = 0.01234567891


def _sentinel(index: int) -> float:
    return _SENTINEL_BASE + 0.001 * index


def trace_pattern(fn: Callable, example: Sequence[Any]) -> PatternGraph:
    """Trace ``fn(*example)`` into export's IR; floats become sentinels (see module doc)."""
    names = positional_params(fn)
    if len(names) != len(example):
        raise ValueError(f"{fn.__name__}: {len(example)} example args for {len(names)} params.")
    args = list(example)
    tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    fixed: dict[str, Any] = {}
    for i, a in enumerate(args):
        if type(a) is float:
            args[i] = _sentinel(i)
        elif not isinstance(a, torch.Tensor):
            fixed[names[i]] = a
    tensors = tuple(args[i] for i in tensor_positions)

    def call(*traced: torch.Tensor) -> Any:
        full = list(args)
        for pos, tensor in zip(tensor_positions, traced):
            full[pos] = tensor
        return (fn(*full),)

    # Pre-dispatch make_fx is what non-strict torch.export runs underneath: same IR, less cost.
    with torch.no_grad():
        graph = make_fx(call, pre_dispatch=True)(*tensors).graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    arg_names = {node.name: names[pos] for node, pos in zip(placeholders, tensor_positions)}
    outputs = graph.output_node().args[0]
    if not (isinstance(outputs, (list, tuple)) and len(outputs) == 1):
        raise ValueError(f"{fn.__name__}: a search function must return exactly one tensor.")
    for node in reversed(list(graph.nodes)):
        if is_check(node):
            graph.erase_node(node)
        elif node.op == "call_function" and noise_input(node) is not None:
            node.replace_all_uses_with(strip_noise(node))
            graph.erase_node(node)
    graph.eliminate_dead_code()
    output = strip_noise(graph.output_node().args[0][0])
    return PatternGraph(graph, output, arg_names, fixed)


def positional_params(fn: Callable) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]


def _literals(node: Node) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) of every literal in a node's arguments (nodes skipped)."""

    def walk(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any]]:
        if isinstance(value, Node):
            return
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                yield from walk(v, path + (i,))
            return
        yield path, value

    for name, value in normalize_dims(node.target, bound_args(node)).items():
        yield from walk(value, (name,))


def _structure(pattern: PatternGraph) -> tuple[Any, ...]:
    """Ops and argument shapes of a traced pattern; equal structures differ only in literals."""
    index = {n: i for i, n in enumerate(pattern.graph.nodes)}

    def shape(value: Any) -> Any:
        if isinstance(value, Node):
            return ("node", index[value])
        if isinstance(value, (list, tuple)):
            return ("list", tuple(shape(v) for v in value))
        return ("lit", type(value).__name__)

    return tuple(
        (n.op, str(target_key(n.target)), tuple((k, shape(v)) for k, v in bound_args(n).items()))
        if n.op == "call_function"
        else (n.op,)
        for n in pattern.graph.nodes
    )


def _merge_rules(group: list[PatternGraph], scalar_names: dict[float, str]) -> PatternGraph:
    """Compare the literals of same-structure traces: equal -> exact, different -> wildcard."""
    first = group[0]
    # Fixed (non-float) arguments that vary within the group are not handed to ``replace``.
    first.fixed = {k: v for k, v in first.fixed.items() if all(p.fixed.get(k) == v for p in group)}
    node_lists = [[n for n in p.graph.nodes] for p in group]
    for i, node in enumerate(node_lists[0]):
        if node.op != "call_function":
            continue
        per_trace = [dict(_literals(nodes[i])) for nodes in node_lists]
        for path, value in per_trace[0].items():
            if isinstance(value, float) and value in scalar_names:
                first.rules[(node.name, path)] = Scalar(scalar_names[value])
            elif any(lits.get(path, ANY) != value for lits in per_trace[1:]):
                first.rules[(node.name, path)] = ANY
    return first


def trace_variants(search_fn: Callable, examples: Sequence[Sequence[Any]]) -> list[PatternGraph]:
    """Trace every example; same-structure traces merge into one variant with literal rules."""
    params = positional_params(search_fn)
    groups: dict[tuple[Any, ...], list[PatternGraph]] = {}
    for example in examples:
        trace = trace_pattern(search_fn, example)
        groups.setdefault(_structure(trace), []).append(trace)
    sentinels = {_sentinel(i): params[i] for i in range(len(params))}
    variants = [_merge_rules(group, sentinels) for group in groups.values()]
    floats = {params[i] for i, a in enumerate(examples[0]) if type(a) is float}
    for variant in variants:
        captured = {r.name for r in variant.rules.values() if isinstance(r, Scalar)}
        if floats - captured:
            raise ValueError(
                f"{search_fn}: float argument(s) {sorted(floats - captured)} do not appear as "
                "literals in the traced graph, so they cannot be captured."
            )
    return variants
