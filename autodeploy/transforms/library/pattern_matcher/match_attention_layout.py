"""match_attention_layout: ``torch_attention`` moves to the layout the cached backends use."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...facts import ATTENTION_LAYOUT, CANONICAL_ATTENTION
from ...graph_utils import find_nodes
from ...interface import TransformConfig
from ...pattern import bound_args, insert_replacement
from ...registry import TransformRegistry
from ._common import PatternMatcherTransform, ad, aten, info_for


class AttentionLayoutConfig(TransformConfig):
    attn_layout: Literal["bsnd", "bnsd"] = Field(
        default="bsnd", description="Layout every torch_attention op should have afterwards."
    )


def _relayout(
    query,
    key,
    value,
    attn_mask,
    dropout_p,
    is_causal,
    scale,
    sinks,
    sliding_window,
    logit_cap,
    layout,
):
    q, k, v = (aten.transpose.int(t, 1, 2) for t in (query, key, value))
    out = ad.torch_attention.default(
        q, k, v, attn_mask, dropout_p, is_causal, scale, sinks, sliding_window, logit_cap, layout
    )
    return aten.transpose.int(out, 1, 2)


@TransformRegistry.register("match_attention_layout")
class MatchAttentionLayout(PatternMatcherTransform):
    """Wrap attention in transposes so it runs in ``attn_layout`` (default ``bsnd``).

    before: ``o = torch_attention(q, k, v, ..., layout="bnsd")``
    after:  ``o = transpose(torch_attention(transpose(q, 1, 2), ..., layout="bsnd"), 1, 2)``
    ``eliminate_redundant_transposes`` then cancels these against HF's own transposes.
    """

    uses = (CANONICAL_ATTENTION,)
    provides = (ATTENTION_LAYOUT,)

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return AttentionLayoutConfig

    def _apply(self, gm, cm, factory, shared_config):
        target = self.config.attn_layout
        count = 0
        for node in find_nodes(gm, ad.torch_attention.default):
            args = bound_args(node)
            if args["layout"] == target:
                continue
            out = insert_replacement(gm, node, _relayout, **{**args, "layout": target})
            node.replace_all_uses_with(out)
            gm.graph.erase_node(node)
            count += 1
        return gm, info_for(count)
