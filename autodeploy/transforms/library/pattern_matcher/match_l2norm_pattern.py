"""match_l2norm_pattern: L2 normalization subgraphs become ``torch_l2norm``."""

from __future__ import annotations

import torch

from ...facts import CANONICAL_L2NORM
from ...pattern import PatternSet
from ...registry import TransformRegistry
from ._common import PatternMatcherTransform, ad, aten, example_configs

EPS = 1e-6


def _l2norm_fp32(x, eps):  # FLA / Qwen3-Next ``l2norm`` with an float32 upcast
    x32 = x.float()
    return (x32 * torch.rsqrt((x32 * x32).sum(dim=-1, keepdim=True) + eps)).to(x.dtype)


def _l2norm(x, eps):  # the same in the input dtype
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _replacement(x, eps):
    return ad.torch_l2norm.default(x, eps)


def _examples() -> list[tuple]:
    shapes = ((2, 3, 8), (3, 5, 16))
    return [(torch.randn(*shapes[i], dtype=dtype), EPS) for dtype, i in example_configs()]


@TransformRegistry.register("match_l2norm_pattern")
class MatchL2NormPattern(PatternMatcherTransform):
    """L2 normalization over the last dim becomes one ``torch_l2norm`` op.

    before: ``x32 = x.float(); y = (x32 * rsqrt(sum(x32 * x32, -1, keepdim) + eps)).to(dtype)``
    after:  ``y = auto_deploy.torch_l2norm(x, eps)``
    Also without the float32 upcast (``torch_l2norm`` always normalizes in float32).
    """

    provides = (CANONICAL_L2NORM,)

    @classmethod
    def build_patterns(cls) -> PatternSet:
        patterns = PatternSet()
        needs = (aten.rsqrt, aten.sum)
        patterns.add(_l2norm_fp32, _replacement, _examples(), requires=needs)
        patterns.add(_l2norm, _replacement, _examples(), requires=needs)
        return patterns
