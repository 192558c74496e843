"""match_sdpa_to_torch_attention: ``F.scaled_dot_product_attention`` becomes ``torch_attention``."""

from __future__ import annotations

from pydantic import Field

from ...facts import CANONICAL_ATTENTION
from ...graph_utils import find_nodes
from ...interface import TransformConfig
from ...pattern import bound_args, insert_replacement
from ...registry import TransformRegistry
from ._common import PatternMatcherTransform, ad, aten, info_for


class SdpaConfig(TransformConfig):
    keep_attn_mask: bool = Field(
        default=False,
        description="Pass an explicit sdpa mask on to torch_attention instead of taking it to be "
        "the causal mask (is_causal=True). Cached attention backends support causal only.",
    )


def _torch_attention(query, key, value, attn_mask, dropout_p, is_causal, scale):
    return ad.torch_attention.default(
        query, key, value, attn_mask, dropout_p, is_causal, scale, None, None, None, "bnsd"
    )


@TransformRegistry.register("match_sdpa_to_torch_attention")
class MatchSdpaToTorchAttention(PatternMatcherTransform):
    """SDPA calls (HF ``attn_implementation="sdpa"``) become ``torch_attention`` (GQA included).

    before: ``o = aten.scaled_dot_product_attention(q, k, v, mask, 0.0, False, scale=s)``
    after:  ``o = auto_deploy.torch_attention(q, k, v, None, 0.0, True, s, ..., "bnsd")``
    A mask is taken to be the causal mask of a decoder and dropped (HF materializes it while
    tracing), unless ``keep_attn_mask``; ``is_causal`` without a mask is kept as it is.
    """

    provides = (CANONICAL_ATTENTION,)

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return SdpaConfig

    def _apply(self, gm, cm, factory, shared_config):
        count = 0
        for node in find_nodes(gm, aten.scaled_dot_product_attention.default):
            args = bound_args(node)
            mask, is_causal = args["attn_mask"], bool(args["is_causal"])
            if mask is not None and not self.config.keep_attn_mask:
                mask, is_causal = None, True
            out = insert_replacement(
                gm,
                node,
                _torch_attention,
                args["query"],
                args["key"],
                args["value"],
                mask,
                float(args["dropout_p"] or 0.0),
                is_causal,
                args["scale"],
            )
            node.replace_all_uses_with(out)
            gm.graph.erase_node(node)
            count += 1
        return gm, info_for(count)
