"""optimize_rope: RoPE in one Triton kernel per layer, cos/sin from a table built once."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch.fx import Graph, GraphModule, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ....custom_ops.backend_resolver import build_device
from ....custom_ops.op_backend import BackendRegistry
from ....utils.logger import logger
from ...base import BaseTransform
from ...graph_utils import find_nodes, node_val, placeholders
from ...interface import SharedConfig, TransformConfig, TransformInfo
from ...pattern import bound_args, propagate_meta
from ...registry import TransformRegistry
from ._backends import UNCHANGED, backend_description, check_backend_installed, node_backends

ad = torch.ops.auto_deploy


class OptimizeRopeConfig(TransformConfig):
    backend: Literal["auto", "triton", "torch"] = Field(
        default="auto",
        description=backend_description("torch_rope_with_cos_sin_cache: only the cos/sin table"),
    )
    cos_sin_cache: bool = Field(
        default=True,
        description="Evaluate the model's cos/sin computation once for every position below "
        "max_seq_len and look rows up by position_ids (one table shared by all layers). False "
        "(or no CachedSequenceInterface) keeps cos/sin computed per forward, once for all layers.",
    )

    @field_validator("backend")
    @classmethod
    def _installed(cls, value: str) -> str:
        return check_backend_installed("rope", value)


def _cos_sin_program(
    gm: GraphModule, cos: Node, sin: Node, position_ids: Node
) -> GraphModule | None:
    """The subgraph that computes (cos, sin) from ``position_ids`` and constants, or None."""
    needed, stack = set(), [cos, sin]
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        if node.op == "placeholder" and node is not position_ids:
            return None  # depends on another input (e.g. input_ids): not a function of position
        if node.op == "call_function" and node.is_impure():
            return None
        stack.extend(node.all_input_nodes)
    if position_ids not in needed:
        return None
    graph, env = Graph(), {}
    for node in gm.graph.nodes:
        if node in needed:
            env[node] = (
                graph.placeholder("position_ids")
                if node is position_ids
                else graph.node_copy(node, env.__getitem__)
            )
    graph.output((env[cos], env[sin]))
    return GraphModule(gm, graph)


def _cos_sin_tables(
    program: GraphModule, num_positions: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """[num_positions, r] cos and sin tables, if the program is a function of each position
    alone (checked by looking a few positions up in differently shaped batches)."""
    with torch.no_grad():
        positions = torch.arange(num_positions, device=device)[None]
        cos, sin = program(positions)
        if cos.dim() != 3 or cos.shape[:2] != (1, num_positions) or sin.shape != cos.shape:
            return None
        cos_table, sin_table = cos[0].contiguous(), sin[0].contiguous()
        last = num_positions - 1
        for probe in ([[last, 0, last // 2]], [[1], [last], [min(2, last)]]):
            probe = torch.tensor(probe, device=device)
            cos_probe, sin_probe = program(probe)
            if not (
                torch.allclose(cos_probe.float(), cos_table[probe].float(), rtol=1e-5, atol=1e-6)
                and torch.allclose(
                    sin_probe.float(), sin_table[probe].float(), rtol=1e-5, atol=1e-6
                )
            ):
                return None
    return cos_table, sin_table


class _Tables:
    """Builds (once per distinct cos/sin pair) and registers the tables as graph buffers."""

    def __init__(
        self,
        gm: GraphModule,
        position_ids: Node | None,
        num_positions: int | None,
        device: torch.device,
    ):
        self.gm, self.position_ids, self.num_positions, self.device = (
            gm,
            position_ids,
            num_positions,
            device,
        )
        self.built: dict[tuple[Node, Node], tuple[Node, Node] | None] = {}

    def get(self, cos: Node, sin: Node) -> tuple[Node, Node] | None:
        if (cos, sin) not in self.built:
            self.built[(cos, sin)] = self._build(cos, sin)
        return self.built[(cos, sin)]

    def _build(self, cos: Node, sin: Node) -> tuple[Node, Node] | None:
        if self.position_ids is None or not self.num_positions:
            return None
        program = _cos_sin_program(self.gm, cos, sin, self.position_ids)
        tables = (
            None if program is None else _cos_sin_tables(program, self.num_positions, self.device)
        )
        if tables is None:
            logger.info(
                "cos/sin of %s is not a function of position_ids alone: kept per forward", cos.name
            )
            return None
        index = len([v for v in self.built.values() if v is not None])
        suffix = "" if index == 0 else f"_{index}"
        nodes = []
        first = next(iter(self.gm.graph.nodes))
        for kind, table in zip(("cos", "sin"), tables):
            name = f"rope_{kind}_table{suffix}"
            self.gm.register_buffer(name, table, persistent=False)  # derived, not a checkpoint key
            with self.gm.graph.inserting_before(first):
                nodes.append(self.gm.graph.get_attr(name))
        return nodes[0], nodes[1]


def _same_batch_and_seq(rope_args: dict, positions: Node) -> bool:
    """cos (per token, [b, s, r]) has the [b, s] of ``position_ids``."""
    cos, pos = node_val(rope_args["cos"]), node_val(positions)
    if not isinstance(cos, torch.Tensor) or not isinstance(pos, torch.Tensor) or pos.dim() != 2:
        return False
    return cos.dim() == 3 and all(
        statically_known_true(a == b) for a, b in zip(cos.shape[:2], pos.shape)
    )


@TransformRegistry.register("optimize_rope")
class OptimizeRope(BaseTransform):
    """Rotate-half RoPE runs in one Triton kernel per layer (query and key together) and reads
    cos/sin from a table computed once at build time.

    before: ``cos, sin = f(position_ids)`` (once per forward);
            ``q2, k2 = torch_rope_with_explicit_cos_sin(q, k, cos, sin, 2)`` (every layer)
    after:  buffers ``rope_cos_table``/``rope_sin_table`` = ``f(arange(max_seq_len))``;
            ``q2, k2 = triton_rope_with_cos_sin_cache(q, k, position_ids, rope_cos_table,
            rope_sin_table, 2)`` (every layer); ``f`` is gone from the graph.
    Partial rotary is supported (the table is r < head_dim wide). When cos/sin are not a function
    of ``position_ids`` alone, or ``cos_sin_cache`` is off, every layer gets
    ``triton_rope_with_explicit_cos_sin`` on the shared cos/sin. Other RoPE variants (complex
    frequencies, q/k interleaving) keep their reference op and do not count as matches.
    """

    config: OptimizeRopeConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return OptimizeRopeConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        nodes = find_nodes(gm, ad.torch_rope_with_explicit_cos_sin)
        others = find_nodes(
            gm, (ad.torch_rope_with_complex_freqs, ad.torch_rope_with_qk_interleaving)
        )
        if others:
            logger.info(
                "%d RoPE ops of other variants (%s) keep their reference op",
                len(others),
                ", ".join(sorted({str(n.target) for n in others})),
            )
        if not nodes:
            return gm, UNCHANGED
        backends = node_backends(self, "rope", self.config.backend, gm, cm, nodes, shared_config)
        if all(b is None or (b == "torch" and not self.config.cos_sin_cache) for b in backends):
            return gm, UNCHANGED
        position_ids = next((p for p in placeholders(gm) if p.target == "position_ids"), None)
        num_positions = cm.info.max_seq_len if cm is not None else None
        tables = _Tables(
            gm,
            position_ids if self.config.cos_sin_cache else None,
            num_positions,
            build_device(gm, cm),
        )
        new_nodes, rewritten = [], 0
        for node, backend in zip(nodes, backends):
            if backend is None:
                continue
            ops = BackendRegistry.get("rope", backend)
            cache_op, explicit_op = ops.op("cos_sin_cache"), ops.op("explicit_cos_sin")
            args = bound_args(node)
            found = (
                tables.get(args["cos"], args["sin"])
                if _same_batch_and_seq(args, position_ids)
                else None
            )
            if found is not None:
                target, call_args = (
                    cache_op,
                    (args["q"], args["k"], position_ids, *found, args["unsqueeze_dim"]),
                )
            elif node.target is not explicit_op:
                target, call_args = explicit_op, tuple(args.values())
            else:
                continue  # torch backend without a table: nothing to change
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(target, call_args)
            new.meta.update({k: v for k, v in node.meta.items() if k != "val"})
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            new_nodes.append(new)
            rewritten += 1
        if not rewritten:
            return gm, UNCHANGED
        has_meta = propagate_meta(gm, new_nodes)
        return gm, TransformInfo(num_matches=rewritten, is_clean=False, has_valid_shapes=has_meta)
