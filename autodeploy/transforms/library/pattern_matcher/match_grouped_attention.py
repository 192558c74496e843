"""match_grouped_attention: fold ``repeat_kv`` into ``torch_attention`` (GQA inside the op)."""

from __future__ import annotations

from ...facts import CANONICAL_ATTENTION, REPEAT_KV_OP
from ...graph_utils import find_nodes, is_op
from ...pattern import bound_args, strip_noise
from ...registry import TransformRegistry
from ._common import PatternMatcherTransform, ad, info_for


@TransformRegistry.register("match_grouped_attention")
class MatchGroupedAttention(PatternMatcherTransform):
    """Attention over repeated kv heads reads the kv heads directly.

    before: ``o = torch_attention(q, repeat_kv(k, n), repeat_kv(v, n), ..., "bnsd")``
    after:  ``o = torch_attention(q, k, v, ..., "bnsd")``
    Both key and value must be repeated by the same factor; the repeats die with their last use.
    """

    uses = (CANONICAL_ATTENTION, REPEAT_KV_OP)

    def _apply(self, gm, cm, factory, shared_config):
        count = 0
        for node in find_nodes(gm, ad.torch_attention.default):
            args = bound_args(node)
            if args["layout"] != "bnsd":
                continue  # repeat_kv repeats dim 1, the heads dim of "bnsd" only
            key, value = strip_noise(args["key"]), strip_noise(args["value"])
            if not (
                is_op(key, ad.torch_attention_repeat_kv)
                and is_op(value, ad.torch_attention_repeat_kv)
            ):
                continue
            if bound_args(key)["n_rep"] != bound_args(value)["n_rep"]:
                continue
            _set_arg(node, 1, "key", key.args[0])
            _set_arg(node, 2, "value", value.args[0])
            count += 1
        return gm, info_for(count)


def _set_arg(node, index: int, name: str, value) -> None:
    if index < len(node.args):
        node.update_arg(index, value)
    else:
        node.update_kwarg(name, value)
