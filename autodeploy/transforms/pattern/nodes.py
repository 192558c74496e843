"""Node-level helpers of the pattern utility: op equivalences, value-preserving noise,
schema-normalized arguments, and inserting replacement code written with op overloads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.fx import Graph, GraphModule, Node
from torch.fx.proxy import GraphAppendingTracer, Proxy

from ...utils.logger import logger
from ...utils.node_args import bound_args
from ..graph_utils import fake_mode_of, get_attr_value, node_val

aten = torch.ops.aten
INT64_MAX = 2**63 - 1

_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_CASTS = {aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default, aten.type_as.default}
_IDENTITIES = {
    aten.alias.default,
    aten.detach.default,
    aten.contiguous.default,
    aten.clone.default,
    aten.lift_fresh_copy.default,
}
_CHECKS = {aten._assert_tensor_metadata.default, aten._assert_scalar.default}
COMMUTATIVE = {aten.add.Tensor, aten.mul.Tensor}

# Arguments that are dimensions, per op: (argument name, rank offset). The rank is that of the
# first tensor argument (or of the first tensor in a list), plus the offset for ops that add a
# dimension (unsqueeze, stack).
DIM_ARGS: dict[Any, tuple[tuple[str, int], ...]] = {
    aten.transpose.int: (("dim0", 0), ("dim1", 0)),
    aten.softmax.int: (("dim", 0),),
    aten._softmax.default: (("dim", 0),),
    aten.slice.Tensor: (("dim", 0),),
    aten.select.int: (("dim", 0),),
    aten.cat.default: (("dim", 0),),
    aten.stack.default: (("dim", 1),),
    aten.unsqueeze.default: (("dim", 1),),
    aten.squeeze.dim: (("dim", 0),),
    aten.mean.dim: (("dim", 0),),
    aten.sum.dim_IntList: (("dim", 0),),
    aten.amax.default: (("dim", 0),),
    aten.flatten.using_ints: (("start_dim", 0), ("end_dim", 0)),
    aten.repeat_interleave.self_int: (("dim", 0),),
    aten.chunk.default: (("dim", 0),),
}


def target_key(target: Any) -> Any:
    """Targets that are the same operation for matching share one key."""
    if target in _RESHAPES:
        return "reshape"
    if target in _CASTS:
        return "cast"
    return target


def same_shape(a: Any, b: Any) -> bool:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.dim() != b.dim():
        return False
    return all(_same_size(x, y) for x, y in zip(a.shape, b.shape))


def _same_size(x: Any, y: Any) -> bool:
    if isinstance(x, int) and isinstance(y, int):
        return x == y
    if str(x) == str(y):
        return True
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    try:
        return bool(statically_known_true(x == y))
    except Exception:  # noqa: BLE001 - incomparable symbols are simply not known to be equal
        return False


def noise_input(node: Node) -> Node | None:
    """If ``node`` only passes its first input through unchanged, return that input."""
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], Node):
        return None
    src, target = node.args[0], node.target
    if target in _IDENTITIES:
        return src
    out, inp = node_val(node), node_val(src)
    if target in _CASTS:
        if isinstance(out, torch.Tensor) and isinstance(inp, torch.Tensor):
            if out.dtype == inp.dtype and out.device == inp.device:
                return src
        return None
    if target is aten.dropout.default:
        p, train = (list(node.args) + [0.0, False])[1:3]
        return src if (not train or p == 0) else None
    if target is aten.slice.Tensor:
        args = bound_args(node)
        end = args["end"]
        if args["start"] in (0, None) and args["step"] == 1:
            if end is None or (isinstance(end, int) and end >= INT64_MAX):
                return src
            size = inp.shape[args["dim"]] if isinstance(inp, torch.Tensor) else None
            if isinstance(end, int) and isinstance(size, int) and end >= size:
                return src
        return None
    if target in _RESHAPES or target is aten.expand.default:
        return src if same_shape(out, inp) else None
    return None


def strip_noise(node: Any) -> Any:
    while isinstance(node, Node):
        src = noise_input(node)
        if src is None:
            return node
        node = src
    return node


def _rank_of(value: Any) -> int | None:
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    val = node_val(value)
    return val.dim() if isinstance(val, torch.Tensor) else None


def normalize_dims(target: Any, args: dict[str, Any]) -> dict[str, Any]:
    spec = DIM_ARGS.get(target)
    if not spec:
        return args
    first = next(iter(args.values()), None)
    rank = _rank_of(first)
    if rank is None:
        return args
    args = dict(args)
    for name, offset in spec:  # negative dims count from the end, whatever the rank
        value = args.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            args[name] = value - rank - offset
        elif isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            args[name] = type(value)(v - rank - offset if v >= 0 else v for v in value)
    return args


def is_check(node: Node) -> bool:
    return node.op == "call_function" and node.target in _CHECKS


def insert_replacement(gm: GraphModule, anchor: Node, fn: Callable, *args: Any, **kwargs: Any):
    """Call ``fn`` on proxies of the node arguments; the new nodes go right before ``anchor``.

    Returns what ``fn`` returned with proxies turned back into nodes (a node or a tuple of
    nodes). The new nodes get ``anchor``'s module-stack metadata and fake-tensor values.
    """
    graph = gm.graph
    tracer = GraphAppendingTracer(graph)
    previous = anchor.prev

    def to_proxy(value: Any) -> Any:
        if isinstance(value, Node):
            return Proxy(value, tracer)
        if isinstance(value, (list, tuple)):
            return type(value)(to_proxy(v) for v in value)
        return value

    with graph.inserting_before(anchor):
        out = fn(*(to_proxy(a) for a in args), **{k: to_proxy(v) for k, v in kwargs.items()})
    new_nodes = []
    node = anchor.prev
    while node is not previous:
        new_nodes.append(node)
        node = node.prev
    new_nodes.reverse()
    for new in new_nodes:
        for key in ("nn_module_stack", "stack_trace"):
            if key in anchor.meta:
                new.meta[key] = anchor.meta[key]
    propagate_meta(gm, new_nodes)
    if isinstance(out, Proxy):
        return out.node
    if isinstance(out, (list, tuple)):
        return tuple(o.node if isinstance(o, Proxy) else o for o in out)
    return out


def propagate_meta(gm: GraphModule, nodes: Sequence[Node]) -> bool:
    """Fill ``meta['val']`` of ``nodes`` from their inputs' fake values; False if impossible."""
    mode = None
    for node in nodes:
        if node.op != "call_function":
            continue
        missing = False

        def val(arg: Any) -> Any:
            nonlocal missing, mode
            if not isinstance(arg, Node):
                return arg
            if "val" not in arg.meta and arg.op == "get_attr":
                mode = mode or fake_mode_of(gm)
                arg.meta["val"] = mode.from_tensor(get_attr_value(gm, arg), static_shapes=True)
            if "val" not in arg.meta:
                missing = True
            return arg.meta.get("val")

        args = torch.fx.node.map_aggregate(node.args, val)
        kwargs = torch.fx.node.map_aggregate(node.kwargs, val)
        if missing:
            return False
        mode = mode or fake_mode_of(gm)
        prev = mode.allow_non_fake_inputs
        mode.allow_non_fake_inputs = True
        try:
            with mode:
                node.meta["val"] = node.target(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - metadata is best effort; shape prop redoes it
            logger.debug("no fake value for %s: %s", node.format_node(), exc)
            return False
        finally:
            mode.allow_non_fake_inputs = prev
    return True


def erase_dead(graph: Graph, nodes: Sequence[Node]) -> None:
    """Erase the given nodes (latest first) that nothing uses any more."""
    for node in nodes:  # export's runtime checks would keep dead values alive
        for user in list(node.users):
            if is_check(user):
                graph.erase_node(user)
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in sorted(set(nodes), key=lambda n: order.get(n, -1), reverse=True):
        # Noise nodes (e.g. dropout at inference) may count as impure; they compute nothing.
        if (
            node in order
            and not node.users
            and (not node.is_impure() or noise_input(node) is not None)
        ):
            graph.erase_node(node)
