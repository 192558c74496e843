"""insert_cached_attention: canonical attention ops become a backend's cached (paged KV) op."""

from __future__ import annotations

import operator
from typing import Any

import torch
from pydantic import Field, field_validator
from torch.fx import GraphModule, Node

from ....custom_ops.attention.descriptor import (
    AttentionDescriptor,
    AttentionRegistry,
    attention_args,
    op_schema,
)
from ....utils.errors import ConfigError
from ....utils.suggest import did_you_mean
from ...base import BaseTransform
from ...facts import (
    ATTENTION_LAYOUT,
    CACHE_INTERFACE,
    CACHE_RESOURCES,
    CANONICAL_ATTENTION,
    EXPORTED_GRAPH,
    INPUTS_ON_DEVICE,
    WEIGHTS_LOADED,
)
from ...graph_utils import add_graph_input, find_nodes
from ...interface import SharedConfig, Stages, TransformConfig, TransformInfo
from ...registry import TransformRegistry

AUTO = "auto"


def resolve_attention_backend(name: str, device: Any) -> str:
    """The backend ``auto`` stands for on ``device``: Triton kernels on CUDA, the reference
    elsewhere (on CPU Triton would only run in its slow interpreter)."""
    if name != AUTO:
        return name
    on_cuda = torch.device(device).type == "cuda"
    return "triton" if on_cuda and AttentionRegistry.has("triton") else "torch"


class InsertCachedAttentionConfig(TransformConfig):
    backend: str = Field(
        default="auto",
        description="Attention backend (a registered AttentionDescriptor: 'torch' is the "
        "reference, 'triton', 'flashinfer'; the `attn_backend` shortcut sets this). 'auto': "
        "triton on CUDA, torch elsewhere.",
    )
    requires_shape_prop: bool = Field(
        default=True,
        description="Run shape propagation first: cache shapes are read from the q/k/v shapes.",
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value != AUTO and not AttentionRegistry.has(value):
            known = [AUTO, *AttentionRegistry.names()]
            raise ValueError(
                f"unknown attention backend {value!r}.{did_you_mean(value, known)} "
                f"Choices: {', '.join(known)} (a backend whose optional "
                "dependency is not installed is not registered)"
            )
        return value


@TransformRegistry.register("insert_cached_attention")
class InsertCachedAttention(BaseTransform):
    """Replace every source attention op of the backend by its cached op; register the caches.

    before: ``out = torch_attention(q, k, v, None, 0.0, True, scale, sinks, window, cap, "bsnd")``
    after:  graph inputs ``batch_info_host, cu_seqlen, input_pos, cache_loc, cu_num_pages``
            (shared by all layers) and ``kv_cache_<i>`` (one per layer);
            ``out = <backend>_cached_attention(q, k, v, batch_info_host, cu_seqlen, input_pos,
            cache_loc, cu_num_pages, [prepare-metadata outputs], kv_cache_<i>,
            scale, window, cap, sinks)``
    The metadata args are activated on ``cm.info``; the caches are registered with
    ``cm.add_resource`` (allocated later by ``initialize_cache``).
    """

    stage = Stages.CACHE_INIT
    requires = (EXPORTED_GRAPH, CACHE_INTERFACE, WEIGHTS_LOADED, CANONICAL_ATTENTION)
    uses = (ATTENTION_LAYOUT, INPUTS_ON_DEVICE)
    provides = (CACHE_RESOURCES,)
    optional = False
    failure_hint = (
        "Try another attention backend (`attn_backend: torch` is the reference), and check the "
        "pattern coverage report for attention the matchers did not turn into torch_attention."
    )

    config: InsertCachedAttentionConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return InsertCachedAttentionConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        if cm is None:
            raise ConfigError(
                "insert_cached_attention needs a CachedSequenceInterface: call "
                "InferenceOptimizer(factory, cfg)(cm) with one."
            )
        if not isinstance(gm, GraphModule):
            raise ConfigError("insert_cached_attention needs an exported GraphModule.")
        backend = AttentionRegistry.get(resolve_attention_backend(self.config.backend, cm.device))
        nodes = find_nodes(gm, backend.get_source_attention_op())
        if not nodes:
            self.report_problem(
                shared_config,
                f"found no {backend.get_source_attention_op()} node: the model would run "
                "without a KV cache. Check that the pattern matchers turned attention into "
                "torch_attention (dump the graph with AUTODEPLOY_DUMP_GRAPHS_DIR).",
            )
            return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)
        for node in nodes:  # check every layer before touching the graph
            backend.check_supported(node)

        metadata = [_graph_input(gm, cm, name) for name in backend.get_standard_metadata_args()]
        metadata += _insert_prepare_metadata(gm, cm, backend)
        cached_op = backend.get_cached_attention_op()
        num_qkv = backend.get_num_qkv_args()
        for node in nodes:
            qkv = list(attention_args(node).values())[:num_qkv]
            caches = []
            for key, handler in backend.get_cache_initializers(node, cm.kv_cache_config).items():
                name = cm.add_resource(key, handler)
                caches.append(add_graph_input(gm, name, handler.example(cm.info)))
            with gm.graph.inserting_before(node):
                cached = gm.graph.call_function(
                    cached_op, args=(*qkv, *metadata, *caches, *backend.get_constants(node))
                )
            cached.meta.update({k: v for k, v in node.meta.items() if k != "val"})
            if "val" in node.meta:
                cached.meta["val"] = node.meta["val"]
            node.replace_all_uses_with(cached)
            gm.graph.erase_node(node)

        hook = backend.get_host_prepare_function()
        if hook is not None:
            cm.info.register_host_prepare_hook(hook)
        return gm, TransformInfo(num_matches=len(nodes), is_clean=False, has_valid_shapes=False)


def _graph_input(gm: GraphModule, cm: Any, name: str) -> Node:
    """The shared graph input for SequenceInfo arg ``name`` (activated on ``cm.info``)."""
    cm.info.activate_arg(name)
    return add_graph_input(gm, name, cm.info.get_arg(name))


def _insert_prepare_metadata(gm: GraphModule, cm: Any, backend: type[AttentionDescriptor]):
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
