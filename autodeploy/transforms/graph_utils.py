"""Graph helpers shared by transforms: cleanup, shape propagation, node queries, new inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch._dispatch.python import enable_python_dispatcher
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx import GraphModule, Node
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from ..utils.node_args import node_val  # noqa: F401  (re-exported: transforms import it here)

OpLike = Any  # an OpOverloadPacket, OpOverload or Python callable used as a call_function target


def canonicalize_graph(gm: GraphModule) -> None:
    """Remove dead code, check the graph, and regenerate ``forward``.

    Unused submodules and parameters stay: they may be aliases (tied weights) or checkpoint keys
    that load hooks expect. A transform that makes a weight obsolete deletes it itself.
    """
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()


def fake_mode_of(gm: GraphModule) -> FakeTensorMode:
    """The fake mode of the graph's inputs (from export), or a fresh one that allows real params."""
    vals = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    mode = detect_fake_mode([v for v in vals if v is not None])
    if mode is None:
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())
    return mode


def run_shape_prop(gm: GraphModule) -> None:
    """Refresh ``node.meta['val']`` on every node with fake tensors (symbolic shapes kept)."""
    mode = fake_mode_of(gm)
    inputs = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if val is None:
            raise RuntimeError(
                f"Graph input {node.name!r} has no example value (node.meta['val']); transforms "
                "that add inputs must set it (see graph_utils.add_graph_input)."
            )
        inputs.append(val)
    prev = mode.allow_non_fake_inputs
    mode.allow_non_fake_inputs = True  # parameters are real (or meta) tensors, not fakes
    try:
        # The Python dispatcher lets symbolic-shape decompositions run; without it torch 2.11
        # fails on some ops with symbolic sizes (e.g. matmul of a fused GEMM's output).
        with mode, enable_python_dispatcher(), _buffers_on_meta_with_meta_parameters(gm):
            FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*inputs)
    finally:
        mode.allow_non_fake_inputs = prev


@contextlib.contextmanager
def _buffers_on_meta_with_meta_parameters(gm: GraphModule) -> Iterator[None]:
    """Before weight loading the parameters are on meta but buffers are real (models/meta_init.py):
    a real buffer meeting activations (e.g. a router's ``e_score_correction_bias``) would mix
    devices, so during propagation the buffers are meta too."""
    if not any(p.device.type == "meta" for p in gm.parameters()):
        yield
        return
    swapped = []
    for module in gm.modules():
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.device.type != "meta" and buffer.dim() > 0:
                swapped.append((module, name, buffer))
                module._buffers[name] = buffer.to("meta")
    try:
        yield
    finally:
        for module, name, buffer in swapped:
            module._buffers[name] = buffer


# node.meta key set by the torch-direct compile backend: the op a direct function call stands for.
DIRECT_CALL_OF = "autodeploy_direct_call_of"


def op_of(node: Node) -> Any:
    """The op a node calls: its target, or for a direct call (torch-direct) the op it replaced."""
    return node.meta.get(DIRECT_CALL_OF, node.target)


def is_op(node: Node, ops: OpLike | Iterable[OpLike]) -> bool:
    """True if ``node`` calls one of ``ops`` (an overload packet matches all its overloads; a
    direct call made by torch-direct counts as the op it replaced)."""
    if node.op != "call_function":
        return False
    if not isinstance(ops, (list, tuple, set, frozenset)):
        ops = (ops,)
    target = op_of(node)
    for op in ops:
        if target is op:
            return True
        packet = getattr(target, "overloadpacket", None)
        if packet is not None and packet is op:
            return True
    return False


def find_nodes(gm: GraphModule, ops: OpLike | Iterable[OpLike]) -> list[Node]:
    return [n for n in gm.graph.nodes if is_op(n, ops)]


def count_ops(gm: GraphModule, ops: OpLike | Iterable[OpLike]) -> int:
    return len(find_nodes(gm, ops))


def placeholders(gm: GraphModule) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def add_graph_input(gm: GraphModule, name: str, example: torch.Tensor | None = None) -> Node:
    """Add (or return the existing) placeholder ``name``; set its fake value from ``example``.

    New inputs go after the existing ones, so keyword calls ``gm(**named_args)`` keep working.
    """
    for node in placeholders(gm):
        if node.target == name:
            return node
    existing = placeholders(gm)
    anchor = existing[-1] if existing else None
    if anchor is None:
        with gm.graph.inserting_before(next(iter(gm.graph.nodes), None)):
            node = gm.graph.placeholder(name)
    else:
        with gm.graph.inserting_after(anchor):
            node = gm.graph.placeholder(name)
    if example is not None:
        mode = fake_mode_of(gm)
        node.meta["val"] = mode.from_tensor(example, static_shapes=True)
    return node


def get_attr_value(gm: GraphModule, node: Node) -> Any:
    """The tensor (or submodule) a ``get_attr`` node refers to."""
    assert node.op == "get_attr", node.op
    value: Any = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value


def named_graphmodules(mod: torch.nn.Module) -> Iterable[tuple[str, GraphModule]]:
    for name, sub in mod.named_modules():
        if isinstance(sub, GraphModule):
            yield name, sub
