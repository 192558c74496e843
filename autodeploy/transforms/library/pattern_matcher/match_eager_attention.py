"""match_eager_attention: matmul-softmax-matmul attention becomes ``torch_attention``."""

from __future__ import annotations

import functools

import torch
from pydantic import Field

from ...facts import CANONICAL_ATTENTION
from ...interface import TransformConfig
from ...pattern import PatternSet, replace_match
from ...registry import TransformRegistry
from ._common import PatternMatcherTransform, ad, aten, example_configs, info_for

SCALE = 0.125
CAP = 30.0


def _eager(q, k, v, attn_mask, scale, scaling, fp32_softmax):
    """HF ``eager_attention_forward`` and relatives; q, k, v: [b, n, s, d] (k, v repeated).

    scaling: "multiply" (scores * scale), "divide" (scores / scale, scale = sqrt(d)) or
    "q_before" (matmul(q * scale, k^T)). Dropout (a no-op at inference) is skipped as noise.
    """
    if scaling == "q_before":
        scores = torch.matmul(q * scale, k.transpose(2, 3))
    elif scaling == "divide":
        scores = torch.matmul(q, k.transpose(2, 3)) / scale
    else:
        scores = torch.matmul(q, k.transpose(2, 3)) * scale
    return _softmax_matmul(scores, attn_mask, v, q.dtype, fp32_softmax)


def _eager_softcap(q, k, v, attn_mask, scale, logit_cap, fp32_softmax):
    """Gemma-2: scores are soft-capped, ``cap * tanh(scores / cap)``, before the mask."""
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    scores = torch.tanh(scores / logit_cap) * logit_cap
    return _softmax_matmul(scores, attn_mask, v, q.dtype, fp32_softmax)


def _softmax_matmul(scores, attn_mask, v, dtype, fp32_softmax):
    if attn_mask is not None:
        scores = scores + attn_mask
    if fp32_softmax:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
    else:
        probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v)


def _replacement(q, k, v, attn_mask, scale, scaling="multiply", logit_cap=None, *, keep_mask: bool):
    # A matched mask is taken to be the causal mask of a decoder; without one attention is full.
    mask = attn_mask if keep_mask else None
    is_causal = attn_mask is not None and not keep_mask
    scale = 1.0 / scale if scaling == "divide" else scale
    return ad.torch_attention.default(
        q, k, v, mask, 0.0, is_causal, scale, None, None, logit_cap, "bnsd"
    )


def _examples(*extra) -> list[tuple]:
    """Traces with and without a mask, for every dtype/shape configuration."""
    out = []
    shapes = ((2, 2, 3, 8), (3, 4, 5, 16))
    for with_mask in (True, False):
        for dtype, i in example_configs():
            b, n, s, d = shapes[i]
            q, k, v = (torch.randn(b, n, s, d, dtype=dtype) for _ in range(3))
            mask = torch.zeros(b, 1, s, s, dtype=dtype) if with_mask else None
            out.append((q, k, v, mask, SCALE, *extra))
    return out


class EagerAttentionConfig(TransformConfig):
    keep_attn_mask: bool = Field(
        default=False,
        description="Pass a matched attention mask on to torch_attention instead of taking it "
        "to be the causal mask (is_causal=True). Cached attention backends support causal only.",
    )


@TransformRegistry.register("match_eager_attention")
class MatchEagerAttention(PatternMatcherTransform):
    """Eager attention (matmul, scale, mask, softmax, dropout, matmul) becomes ``torch_attention``.

    before: ``p = softmax(matmul(q, k.transpose(2, 3)) * scale + mask, -1, f32).to(dt);``
            ``o = matmul(dropout(p), v)``
    after:  ``o = auto_deploy.torch_attention(q, k, v, None, 0.0, True, scale, ..., "bnsd")``
    Variants: scale on q before the matmul, division by the scale, softmax in the input dtype
    (with the scale multiplied), Gemma-2 soft-capping (-> logit_cap), no mask (full attention:
    is_causal=False). A mask is taken to be causal and dropped, unless ``keep_attn_mask``.
    """

    provides = (CANONICAL_ATTENTION,)

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return EagerAttentionConfig

    @classmethod
    def build_patterns(cls) -> PatternSet:
        patterns = PatternSet()  # replacements depend on the config: see _apply
        softmax = (aten.softmax,)
        for scaling in ("multiply", "divide", "q_before"):
            patterns.add(_eager, None, _examples(scaling, True), requires=softmax)
        patterns.add(_eager, None, _examples("multiply", False), requires=softmax)
        patterns.add(_eager_softcap, None, _examples(CAP, True), requires=(*softmax, aten.tanh))
        return patterns

    def _apply(self, gm, cm, factory, shared_config):
        replace = functools.partial(_replacement, keep_mask=self.config.keep_attn_mask)
        count = sum(replace_match(gm, match, replace) for _, match in self.patterns().find(gm))
        return gm, info_for(count)
