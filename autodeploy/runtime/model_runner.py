"""ModelRunner: how the engine lays out a step and runs the forward.

The engine talks to this small interface only, so a multi-rank runner
(``autodeploy.distributed.runner``) can send each step to the other ranks first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class LocalModelRunner:
    """One process: ``nest_sequences`` on the sequence interface, then ``model(**named_args)``."""

    def __init__(self, model: Callable[..., Any], cm: Any):
        self.model = model
        self.cm = cm

    def prepare(
        self,
        input_ids: Sequence[Sequence[int]],
        input_pos: Sequence[int],
        cache_loc: Sequence[Sequence[int]],
        slot_idx: Sequence[int],
    ) -> None:
        self.cm.info.nest_sequences(input_ids, input_pos, cache_loc, slot_idx=slot_idx)

    def forward(
        self, model: Callable[..., Any] | None = None, all_token_logits: bool = False
    ) -> Any:
        """Run ``model`` (default: the built one) on the laid-out step. ``all_token_logits``:
        ``model`` is the variant without the logit gather (see ``all_token_logits.py``)."""
        return (model or self.model)(**self.cm.named_args)

    def shutdown(self) -> None:
        """Nothing to stop in one process."""
