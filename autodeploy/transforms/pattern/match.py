"""Matching pattern graphs against a graph, and ``PatternSet``: the API matchers use."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.fx import GraphModule, Node

from ...utils.logger import logger
from ..graph_utils import node_val
from .nodes import (
    COMMUTATIVE,
    bound_args,
    erase_dead,
    insert_replacement,
    noise_input,
    normalize_dims,
    same_shape,
    strip_noise,
    target_key,
)
from .trace import ANY, PatternGraph, Scalar, trace_variants


@dataclasses.dataclass
class Match:
    """A place in the graph where a pattern matched."""

    anchor: Node  # the graph node that computes the pattern's result
    inputs: dict[str, Node]  # search-function argument name -> graph node
    scalars: dict[str, Any]  # captured float arguments and this variant's fixed arguments
    nodes: list[Node]  # graph nodes the pattern covered (noise included)
    pattern: PatternGraph


class _State:
    def __init__(self) -> None:
        self.inputs: dict[str, Node] = {}
        self.scalars: dict[str, Any] = {}
        self.nodes: list[Node] = []

    def save(self) -> tuple[dict[str, Node], dict[str, Any], int]:
        return dict(self.inputs), dict(self.scalars), len(self.nodes)

    def restore(self, saved: tuple[dict[str, Node], dict[str, Any], int]) -> None:
        self.inputs, self.scalars = dict(saved[0]), dict(saved[1])
        del self.nodes[saved[2] :]


def _match_value(p: PatternGraph, pnode: Node, path: tuple, pv: Any, gv: Any, st: _State) -> bool:
    if isinstance(pv, Node):
        return isinstance(gv, Node) and _match_node(p, pv, gv, st)
    rule = p.rule(pnode, path, pv)
    if rule is ANY:
        return True
    if isinstance(pv, (list, tuple)) and not isinstance(rule, Scalar):
        if not isinstance(gv, (list, tuple)) or len(gv) != len(pv):
            return False
        return all(
            _match_value(p, pnode, path + (i,), a, b, st) for i, (a, b) in enumerate(zip(pv, gv))
        )
    if isinstance(rule, Scalar):
        if isinstance(gv, Node) or isinstance(gv, bool) or not isinstance(gv, (int, float)):
            return False
        seen = st.scalars.setdefault(rule.name, gv)
        return math.isclose(seen, gv, rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(pv, float) and isinstance(gv, (int, float)) and not isinstance(gv, bool):
        return math.isclose(pv, gv, rel_tol=1e-6, abs_tol=1e-12)
    return type(pv) is type(gv) and pv == gv


def _match_node(p: PatternGraph, pnode: Node, gnode: Node, st: _State) -> bool:
    if pnode.op == "placeholder":
        gnode = strip_noise(gnode)
        bound = st.inputs.setdefault(p.arg_names[pnode.name], gnode)
        return bound is gnode
    candidate: Node | None = gnode
    while candidate is not None:  # the node itself, then through value-preserving noise
        saved = st.save()
        if _match_op(p, pnode, candidate, st):
            if candidate is not gnode:
                st.nodes.extend(_noise_chain(gnode, candidate))
            return True
        st.restore(saved)
        candidate = noise_input(candidate)
    return False


def _noise_chain(start: Node, stop: Node) -> list[Node]:
    chain, node = [], start
    while node is not stop and node is not None:
        chain.append(node)
        node = noise_input(node)
    return chain


def _match_op(p: PatternGraph, pnode: Node, gnode: Node, st: _State) -> bool:
    if pnode.op == "get_attr" or gnode.op != "call_function":
        return False
    if target_key(pnode.target) != target_key(gnode.target):
        return False
    if target_key(pnode.target) == "cast":  # casts match by the dtype they produce
        pv, gv = node_val(pnode), node_val(gnode)
        if not (isinstance(pv, torch.Tensor) and isinstance(gv, torch.Tensor)):
            return False
        any_dtype = p.rules.get((pnode.name, ("dtype",))) is ANY  # "back to the input dtype"
        if not any_dtype and pv.dtype != gv.dtype:
            return False
        if not _match_node(p, pnode.args[0], gnode.args[0], st):
            return False
        st.nodes.append(gnode)
        return True
    pargs = normalize_dims(pnode.target, bound_args(pnode))
    gargs = normalize_dims(gnode.target, bound_args(gnode))
    if pnode.target in COMMUTATIVE and pnode.target is gnode.target:
        orders = [gargs, {**gargs, "self": gargs["other"], "other": gargs["self"]}]
    else:
        orders = [gargs]
    for gargs_order in orders:
        saved = st.save()
        if all(
            _match_value(p, pnode, (name,), value, gargs_order.get(name), st)
            for name, value in pargs.items()
        ):
            st.nodes.append(gnode)
            return True
        st.restore(saved)
    return False


def match_at(pattern: PatternGraph, node: Node) -> Match | None:
    """Match ``pattern`` with its result at ``node``."""
    st = _State()
    if not _match_op(pattern, pattern.output, node, st):
        return None
    return Match(node, st.inputs, {**pattern.fixed, **st.scalars}, st.nodes, pattern)


@dataclasses.dataclass
class _Entry:
    name: str
    search_fn: Callable
    examples: Sequence[Sequence[Any]]
    replace_fn: Callable | None
    check: Callable[[Match], dict[str, Any] | None] | None
    requires: tuple[Any, ...]
    _variants: list[PatternGraph] | None = None

    @property
    def variants(self) -> list[PatternGraph]:
        """The traced variants (traced on first use, then kept)."""
        if self._variants is None:
            self._variants = trace_variants(self.search_fn, self.examples)
        return self._variants

    def may_match(self, gm: GraphModule) -> bool:
        """Cheap pre-check: every op in ``requires`` occurs in the graph."""
        present = {n.target for n in gm.graph.nodes if n.op == "call_function"}
        packets = {getattr(t, "overloadpacket", t) for t in present}
        return all(op in present or op in packets for op in self.requires)


class PatternSet:
    """An ordered list of (search, replace) pairs, each traced for several examples."""

    def __init__(self) -> None:
        self.entries: list[_Entry] = []

    def add(
        self,
        search_fn: Callable,
        replace_fn: Callable | None,
        examples: Sequence[Sequence[Any]],
        check: Callable[[Match], dict[str, Any] | None] | None = None,
        name: str | None = None,
        requires: Sequence[Any] = (),
    ) -> None:
        """Register ``search_fn`` -> ``replace_fn``, traced on every example (see the module doc).

        Tracing happens on first use; ``requires`` (ops, overloads or packets) lets a graph
        without them skip this entry without tracing it at all.
        """
        name = name or getattr(search_fn, "__name__", None) or repr(search_fn)
        self.entries.append(
            _Entry(name, search_fn, list(examples), replace_fn, check, tuple(requires))
        )

    def find(self, gm: GraphModule) -> Iterator[tuple[_Entry, Match]]:
        """Matches in graph order, entry by entry, variant by variant (lazily: replacing a match
        before asking for the next one is fine)."""
        for entry in self.entries:
            if not entry.may_match(gm):
                continue
            for variant in entry.variants:
                key = target_key(variant.output.target)
                for node in list(gm.graph.nodes):
                    if getattr(node, "_erased", False) or node.op != "call_function":
                        continue  # erased by an earlier replacement
                    if target_key(node.target) != key or not node.users:
                        continue
                    match = match_at(variant, node)
                    if match is not None:
                        yield entry, match

    def apply(self, gm: GraphModule) -> int:
        """Replace every match; return how many sites were replaced."""
        count = 0
        for entry, match in self.find(gm):
            if entry.replace_fn is None:
                continue
            if replace_match(gm, match, entry.replace_fn, entry.check):
                count += 1
        return count


def replace_match(
    gm: GraphModule,
    match: Match,
    replace_fn: Callable,
    check: Callable[[Match], dict[str, Any] | None] | None = None,
) -> bool:
    """Replace one match; False if ``check`` rejects it or the result would differ in
    shape/dtype from the matched node."""
    extra: dict[str, Any] = {}
    if check is not None:
        result = check(match)
        if result is None:
            return False
        extra = result
    available = {**match.inputs, **match.scalars, **extra}
    kwargs: dict[str, Any] = {}
    for param in inspect.signature(replace_fn).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            kwargs = {**available, **kwargs}
        elif param.name in available:
            kwargs[param.name] = available[param.name]
        elif param.default is inspect.Parameter.empty:
            raise TypeError(f"{replace_fn}: the match has no value for {param.name!r}.")
    previous = match.anchor.prev
    out = insert_replacement(gm, match.anchor, replace_fn, **kwargs)
    old_val, new_val = node_val(match.anchor), node_val(out)
    if isinstance(old_val, torch.Tensor) and isinstance(new_val, torch.Tensor):
        if old_val.dtype != new_val.dtype or not same_shape(old_val, new_val):
            logger.debug(
                "rejected %s: replacement gives %s/%s, graph has %s/%s",
                match.anchor,
                new_val.dtype,
                tuple(new_val.shape),
                old_val.dtype,
                tuple(old_val.shape),
            )
            node = match.anchor.prev
            while node is not previous:
                prev = node.prev
                gm.graph.erase_node(node)
                node = prev
            return False
    match.anchor.replace_all_uses_with(out)
    erase_dead(gm.graph, match.nodes)
    return True
