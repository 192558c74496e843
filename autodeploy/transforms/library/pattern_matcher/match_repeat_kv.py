"""match_repeat_kv: Hugging Face ``repeat_kv`` becomes ``torch_attention_repeat_kv``."""

from __future__ import annotations

import torch

from ...facts import REPEAT_KV_OP
from ...pattern import Match, PatternSet
from ...registry import TransformRegistry
from ._common import PatternMatcherTransform, ad, aten, example_configs


def _hf_repeat_kv(x, n_rep):  # [b, n_kv, s, d] -> [b, n_kv * n_rep, s, d]
    b, n_kv, s, d = x.shape
    return x[:, :, None, :, :].expand(b, n_kv, n_rep, s, d).reshape(b, n_kv * n_rep, s, d)


def _repeat_interleave(x, n_rep):
    return torch.repeat_interleave(x, n_rep, dim=1)


def _replacement(x, n_rep):
    return ad.torch_attention_repeat_kv.default(x, n_rep)


def _n_rep(match: Match) -> dict[str, int] | None:
    """Read n_rep from the shapes; only a [b, n, s, d] tensor repeated along dim 1 qualifies."""
    src, out = match.inputs["x"].meta.get("val"), match.anchor.meta.get("val")
    if src is None or out is None or src.dim() != 4 or out.dim() != 4:
        return None
    n_kv, n_heads = src.shape[1], out.shape[1]
    if not (isinstance(n_kv, int) and isinstance(n_heads, int)) or n_heads % n_kv:
        return None
    return {"n_rep": n_heads // n_kv}


def _examples() -> list[tuple]:
    shapes = (((2, 2, 3, 8), 2), ((3, 4, 5, 16), 3))
    return [
        (torch.randn(*shapes[i][0], dtype=dtype), shapes[i][1]) for dtype, i in example_configs()
    ]


@TransformRegistry.register("match_repeat_kv")
class MatchRepeatKV(PatternMatcherTransform):
    """GQA head repetition becomes one op that ``match_grouped_attention`` can fold away.

    before: ``y = reshape(expand(unsqueeze(x, 2), [b, n_kv, n_rep, s, d]), [b, n_kv*n_rep, s, d])``
            (or ``repeat_interleave(x, n_rep, dim=1)``)
    after:  ``y = auto_deploy.torch_attention_repeat_kv(x, n_rep)``
    """

    provides = (REPEAT_KV_OP,)

    @classmethod
    def build_patterns(cls) -> PatternSet:
        patterns = PatternSet()
        patterns.add(
            _hf_repeat_kv, _replacement, _examples(), check=_n_rep, requires=(aten.expand,)
        )
        patterns.add(
            _repeat_interleave,
            _replacement,
            _examples(),
            check=_n_rep,
            requires=(aten.repeat_interleave,),
        )
        return patterns
