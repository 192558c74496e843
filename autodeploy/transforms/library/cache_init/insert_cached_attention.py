"""insert_cached_attention: canonical attention ops become a backend's cached (paged KV) op."""

from __future__ import annotations

from pydantic import Field, field_validator
from torch.fx import GraphModule

from ....custom_ops.attention.descriptor import ATTENTION
from ....custom_ops.op_backend import check_backend_name
from ....utils.errors import ConfigError
from ...base import BaseTransform
from ...interface import SharedConfig, TransformConfig, TransformInfo
from ...registry import TransformRegistry
from ._cached_op_insertion import insert_cached_ops


class InsertCachedAttentionConfig(TransformConfig):
    backend: str = Field(
        default="auto",
        description="Attention backend (a registered backend of the 'attention' op family: "
        "'torch' is the reference, 'sdpa' (batched torch), 'triton', 'flashinfer'; the "
        "`attn_backend` shortcut sets this). 'auto': per node, the highest-priority backend for "
        "the device that supports it (triton on CUDA, sdpa elsewhere).",
    )
    requires_shape_prop: bool = Field(
        default=True,
        description="Run shape propagation first: cache shapes are read from the q/k/v shapes.",
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return check_backend_name(ATTENTION.name, value)


@TransformRegistry.register("insert_cached_attention")
class InsertCachedAttention(BaseTransform):
    """Replace every source attention op by its backend's cached op; register the caches.

    before: ``out = torch_attention(q, k, v, None, 0.0, True, scale, sinks, window, cap, "bsnd")``
    after:  graph inputs ``batch_info_host, cu_seqlen, input_pos, cache_loc, cu_num_pages``
            (shared by all layers) and ``kv_cache_<i>`` (one per layer);
            ``out = <backend>_cached_attention(q, k, v, batch_info_host, cu_seqlen, input_pos,
            cache_loc, cu_num_pages, [prepare-metadata outputs], kv_cache_<i>,
            scale, window, cap, sinks)``
    The metadata args are activated on ``cm.info``; the caches are registered with
    ``cm.add_resource`` (allocated later by ``initialize_cache``). The work is the generic
    cached-op insertion (``_cached_op_insertion.py``) for the ``attention`` family.
    """

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
        done = insert_cached_ops(gm, cm, ATTENTION.name, self.config.backend)
        if not done.num_replaced:
            self.report_problem(
                shared_config,
                f"found no {done.source_op} node: the model would run without a KV cache. "
                "Check that the pattern matchers turned attention into torch_attention (dump "
                "the graph with AUTODEPLOY_DUMP_GRAPHS_DIR).",
            )
            return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)
        return gm, TransformInfo(
            num_matches=done.num_replaced, is_clean=False, has_valid_shapes=False
        )
