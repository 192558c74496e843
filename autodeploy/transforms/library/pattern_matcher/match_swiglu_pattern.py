"""match_swiglu_pattern: gated SiLU MLPs become ``torch_swiglu_mlp``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...facts import CANONICAL_SWIGLU
from ...pattern import PatternSet
from ...registry import TransformRegistry
from ._common import PatternMatcherTransform, ad, aten, example_configs


def _swiglu(x, gate_weight, up_weight, down_weight):
    return F.linear(F.silu(F.linear(x, gate_weight)) * F.linear(x, up_weight), down_weight)


def _swiglu_bias(x, gate_weight, up_weight, down_weight, gate_bias, up_bias, down_bias):
    gate = F.silu(F.linear(x, gate_weight, gate_bias))
    return F.linear(gate * F.linear(x, up_weight, up_bias), down_weight, down_bias)


def _replacement(
    x, gate_weight, up_weight, down_weight, gate_bias=None, up_bias=None, down_bias=None
):
    return ad.torch_swiglu_mlp.default(
        x, gate_weight, up_weight, down_weight, gate_bias, up_bias, down_bias
    )


def _examples(bias: bool) -> list[tuple]:
    out = []
    for dtype, i in example_configs():
        hidden, inter = ((8, 12), (16, 20))[i]
        x = torch.randn(2 + i, 3 + i, hidden, dtype=dtype)
        weights = [
            torch.randn(inter, hidden, dtype=dtype),
            torch.randn(inter, hidden, dtype=dtype),
            torch.randn(hidden, inter, dtype=dtype),
        ]
        biases = [
            torch.randn(inter, dtype=dtype),
            torch.randn(inter, dtype=dtype),
            torch.randn(hidden, dtype=dtype),
        ]
        out.append((x, *weights, *biases) if bias else (x, *weights))
    return out


@TransformRegistry.register("match_swiglu_pattern")
class MatchSwiGLUPattern(PatternMatcherTransform):
    """``down(silu(gate(x)) * up(x))`` becomes one ``torch_swiglu_mlp`` op (biases optional).

    before: ``y = linear(silu(linear(x, w_gate)) * linear(x, w_up), w_down)``
    after:  ``y = auto_deploy.torch_swiglu_mlp(x, w_gate, w_up, w_down, None, None, None)``
    Off by default: sharding splits the plain linear ops.
    """

    provides = (CANONICAL_SWIGLU,)

    @classmethod
    def build_patterns(cls) -> PatternSet:
        patterns = PatternSet()
        needs = (aten.silu, aten.linear)
        patterns.add(_swiglu_bias, _replacement, _examples(bias=True), requires=needs)
        patterns.add(_swiglu, _replacement, _examples(bias=False), requires=needs)
        return patterns
