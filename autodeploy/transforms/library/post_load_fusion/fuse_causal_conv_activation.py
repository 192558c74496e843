"""fuse_causal_conv_activation: a causal conv whose only user is a SiLU applies it itself."""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from ...base import BaseTransform
from ...facts import CANONICAL_CAUSAL_CONV, EXPORTED_GRAPH
from ...graph_utils import is_op
from ...interface import SharedConfig, Stages, TransformConfig, TransformInfo
from ...pattern import bound_args
from ...registry import TransformRegistry

aten = torch.ops.aten


def _conv_ops() -> list:
    """The causal conv ops (reference and cached backends) whose last argument is the
    activation."""
    ad = torch.ops.auto_deploy
    names = ("torch_causal_conv1d", "torch_cached_causal_conv1d", "triton_cached_causal_conv1d")
    return [getattr(ad, name) for name in names if hasattr(ad, name)]


@TransformRegistry.register("fuse_causal_conv_activation")
class FuseCausalConvActivation(BaseTransform):
    """Fold the SiLU after each causal conv into the conv op.

    before: ``y = silu(torch_causal_conv1d(x, w, b, None))``
    after:  ``y = torch_causal_conv1d(x, w, b, "silu")`` (the cached conv ops the same way)
    """

    stage = Stages.POST_LOAD_FUSION
    requires = (EXPORTED_GRAPH,)
    uses = (CANONICAL_CAUSAL_CONV,)

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return TransformConfig

    def _apply(self, gm: GraphModule, cm, factory, shared_config: SharedConfig):
        fused = 0
        for conv in list(gm.graph.nodes):
            if not is_op(conv, _conv_ops()) or conv.kwargs or len(conv.users) != 1:
                continue
            (act,) = conv.users
            args = bound_args(conv)
            if not is_op(act, aten.silu.default) or args["activation"] is not None:
                continue
            conv.args = (*list(args.values())[:-1], "silu")
            act.replace_all_uses_with(conv)
            gm.graph.erase_node(act)
            fused += 1
        if not fused:
            return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)
        return gm, TransformInfo(num_matches=fused, is_clean=False, has_valid_shapes=True)
