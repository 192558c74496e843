"""Rank 0's model runner: sends each step's batch description (and whether it runs the
all-token-logits variant of the model) to every rank, then runs the forward like the
single-process runner. Any failure on the way becomes a ``DistributedError``
naming the failed rank, and every worker is stopped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..runtime.model_runner import LocalModelRunner
from ..utils.errors import DistributedError
from .launch import RankGroup


class DistributedModelRunner(LocalModelRunner):
    def __init__(self, model: Any, cm: Any, group: RankGroup):
        super().__init__(model, cm)
        self.group = group
        self._failed: DistributedError | None = None

    def prepare(
        self,
        input_ids: Sequence[Sequence[int]],
        input_pos: Sequence[int],
        cache_loc: Sequence[Sequence[int]],
        slot_idx: Sequence[int],
    ) -> None:
        self._check_alive()
        self._message = (
            "step",
            [list(ids) for ids in input_ids],
            list(input_pos),
            [list(pages) for pages in cache_loc],
            list(slot_idx),
        )
        super().prepare(input_ids, input_pos, cache_loc, slot_idx)

    def forward(self, model: Any = None, all_token_logits: bool = False) -> Any:
        """Send the step (and which model variant runs it) to every rank, then run it here."""
        self._check_alive()
        try:
            self.group.broadcast((*self._message, all_token_logits))
            return super().forward(model, all_token_logits)
        except Exception as exc:
            raise self._fail(exc) from exc

    def shutdown(self) -> None:
        self.group.shutdown(graceful=self._failed is None)

    def _fail(self, exc: BaseException) -> DistributedError:
        self._failed = self.group.failure(exc)
        return self._failed

    def _check_alive(self) -> None:
        if self._failed is not None:
            raise DistributedError(f"This job already ended: {self._failed}")
