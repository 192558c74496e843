"""Shared base for matchers built on a ``PatternSet`` (see ``autodeploy.transforms.pattern``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch.fx import GraphModule

from .... import custom_ops  # noqa: F401  (registers the ops the replacements call)
from ...base import BaseTransform
from ...facts import EXPORTED_GRAPH
from ...interface import SharedConfig, Stages, TransformInfo
from ...pattern import PatternSet

aten = torch.ops.aten
ad = torch.ops.auto_deploy


def info_for(num_matches: int) -> TransformInfo:
    """The result of a rewrite: nothing to clean if nothing changed."""
    changed = num_matches > 0
    return TransformInfo(
        skipped=not changed,
        num_matches=num_matches,
        is_clean=not changed,
        has_valid_shapes=not changed,
    )


class PatternMatcherTransform(BaseTransform):
    """A matcher whose work is one ``PatternSet``, traced once per process on first use.

    Every matcher runs in stage ``pattern_matcher`` on an exported graph; subclasses declare what
    they provide (and use).
    """

    stage = Stages.PATTERN_MATCHER
    requires = (EXPORTED_GRAPH,)
    _pattern_cache: ClassVar[dict[type, PatternSet]] = {}

    @classmethod
    def build_patterns(cls) -> PatternSet:
        raise NotImplementedError

    @classmethod
    def patterns(cls) -> PatternSet:
        if cls not in cls._pattern_cache:
            cls._pattern_cache[cls] = cls.build_patterns()
        return cls._pattern_cache[cls]

    def _apply(self, gm: GraphModule, cm, factory, shared_config: SharedConfig):
        return gm, info_for(self.patterns().apply(gm))


def example_configs() -> list[tuple[torch.dtype, int]]:
    """(dtype, shape index) pairs to trace a pattern for.

    Casts appear or vanish depending on the dtype, so float32 and a low-precision dtype each
    give a variant; each variant is traced for two shapes (0 and 1; make every dim differ) so
    shape-derived literals become wildcards. bfloat16 and float16 share a variant: a cast "back
    to the input dtype" then matches either.
    """
    return [(torch.float32, 0), (torch.float32, 1), (torch.bfloat16, 0), (torch.float16, 1)]
