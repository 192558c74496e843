"""match_rope_layout: RoPE ops move to the layout the attention backends use."""

from __future__ import annotations

import operator
from typing import Literal

from pydantic import Field

from ...facts import CANONICAL_ROPE, ROPE_LAYOUT
from ...graph_utils import find_nodes
from ...interface import TransformConfig
from ...pattern import bound_args, insert_replacement
from ...registry import TransformRegistry
from ._common import PatternMatcherTransform, ad, aten, info_for

_ROPE_OPS = (
    ad.torch_rope_with_explicit_cos_sin.default,
    ad.torch_rope_with_complex_freqs.default,
    ad.torch_rope_with_qk_interleaving.default,
)
# unsqueeze_dim is the heads dim cos/sin broadcast over: 1 in [b, n, s, d], 2 in [b, s, n, d].
_UNSQUEEZE_DIM = {"bnsd": 1, "bsnd": 2}


def _relayout(op, unsqueeze_dim, q, k, *rest):
    out = op(aten.transpose.int(q, 1, 2), aten.transpose.int(k, 1, 2), *rest, unsqueeze_dim)
    return aten.transpose.int(out[0], 1, 2), aten.transpose.int(out[1], 1, 2)


class RopeLayoutConfig(TransformConfig):
    expected_layout: Literal["bsnd", "bnsd"] = Field(
        default="bsnd", description="Layout of q/k that every RoPE op should have afterwards."
    )


@TransformRegistry.register("match_rope_layout")
class MatchRopeLayout(PatternMatcherTransform):
    """Wrap RoPE ops in transposes so q/k are in ``expected_layout`` (default ``bsnd``).

    before: ``q2, k2 = torch_rope_*(q, k, cos, sin, unsqueeze_dim=1)``  (q, k: [b, n, s, d])
    after:  ``o = torch_rope_*(transpose(q, 1, 2), transpose(k, 1, 2), cos, sin, 2);``
            ``q2, k2 = transpose(o[0], 1, 2), transpose(o[1], 1, 2)``
    ``eliminate_redundant_transposes`` then cancels these against HF's own transposes.
    """

    uses = (CANONICAL_ROPE,)
    provides = (ROPE_LAYOUT,)

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return RopeLayoutConfig

    def _apply(self, gm, cm, factory, shared_config):
        wanted = _UNSQUEEZE_DIM[self.config.expected_layout]
        count = 0
        for node in find_nodes(gm, _ROPE_OPS):
            unsqueeze_dim = bound_args(node)["unsqueeze_dim"]
            if unsqueeze_dim == wanted or unsqueeze_dim not in _UNSQUEEZE_DIM.values():
                continue
            args = list(bound_args(node).values())[:-1]  # all but unsqueeze_dim
            new = insert_replacement(gm, node, _relayout, node.target, wanted, *args)
            for user in list(node.users):
                if user.op == "call_function" and user.target is operator.getitem:
                    user.replace_all_uses_with(new[user.args[1]])
                    gm.graph.erase_node(user)
            if not node.users:
                gm.graph.erase_node(node)
            count += 1
        return gm, info_for(count)
