"""match_rmsnorm_pattern: RMSNorm subgraphs become ``torch_rmsnorm`` / ``torch_rmsnorm_gated``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...facts import CANONICAL_RMSNORM
from ...pattern import Match, PatternSet
from ...registry import TransformRegistry
from ._common import PatternMatcherTransform, ad, aten, example_configs

EPS = 1e-6


def _normalize(x32: torch.Tensor, eps: float) -> torch.Tensor:
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)


def _llama(
    x, weight, eps
):  # Llama, Mistral, Qwen, Granite, SmolLM3, ... (also with w on the right)
    return weight * _normalize(x.to(torch.float32), eps).to(x.dtype)


def _cast_after_scale(x, weight, eps):  # OLMo-2
    return (weight * _normalize(x.to(torch.float32), eps)).to(x.dtype)


def _gemma(x, weight, eps):  # Gemma: the weight is stored as an offset from 1
    return (_normalize(x.float(), eps) * (1.0 + weight.float())).type_as(x)


def _gated(x, gate, weight, eps):  # Mamba-2 (HF MambaRMSNormGated), gate applied before the norm
    h = x.to(torch.float32) * F.silu(gate.to(torch.float32))
    return weight * _normalize(h, eps).to(x.dtype)


def _rmsnorm(x, weight, eps):
    return ad.torch_rmsnorm.default(x, weight, eps)


def _rmsnorm_offset(x, weight, eps):
    return ad.torch_rmsnorm.default(x, aten.add.Tensor(weight, 1.0), eps)


def _rmsnorm_gated(x, gate, weight, eps, group_size):
    return ad.torch_rmsnorm_gated.default(x, weight, gate, eps, group_size, False)


def _group_size(match: Match) -> dict[str, int] | None:
    hidden = match.inputs["x"].meta["val"].shape[-1]
    return {"group_size": int(hidden)} if isinstance(hidden, int) else None


def _examples(with_gate: bool = False) -> list[tuple]:
    out = []
    for dtype, shape_index in example_configs():
        shape = ((2, 3, 8), (3, 5, 16))[shape_index]
        x = torch.randn(*shape, dtype=dtype)
        w = torch.randn(shape[-1], dtype=dtype)
        out.append((x, torch.randn_like(x), w, EPS) if with_gate else (x, w, EPS))
    return out


@TransformRegistry.register("match_rmsnorm_pattern")
class MatchRMSNormPattern(PatternMatcherTransform):
    """RMSNorm written out in aten ops becomes one ``torch_rmsnorm`` op (gated: Mamba-2).

    before: ``x32 = to(x, f32); y = x32 * rsqrt(mean(x32 ** 2, -1) + eps); out = w * to(y, dtype)``
    after:  ``out = auto_deploy.torch_rmsnorm(x, w, eps)``
    Variants: the cast after the scale (OLMo-2); Gemma's ``* (1 + w)`` (emits ``w + 1`` as the
    weight); the gated norm ``norm(x * silu(gate)) * w`` -> ``torch_rmsnorm_gated``.
    """

    provides = (CANONICAL_RMSNORM,)

    @classmethod
    def build_patterns(cls) -> PatternSet:
        patterns = PatternSet()
        rsqrt = (aten.rsqrt,)
        patterns.add(
            _gated,
            _rmsnorm_gated,
            _examples(with_gate=True),
            check=_group_size,
            requires=(*rsqrt, aten.silu),
        )
        patterns.add(_llama, _rmsnorm, _examples(), requires=rsqrt)
        patterns.add(_cast_after_scale, _rmsnorm, _examples(), requires=rsqrt)
        patterns.add(_gemma, _rmsnorm_offset, _examples(), requires=rsqrt)
        return patterns
