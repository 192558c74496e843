"""The compact default view of a build: one line per stage as the build passes it.

Per-transform lines are DEBUG (``AUTODEPLOY_LOG_LEVEL=DEBUG`` shows them); the summary table
at the end of the build lists every transform once.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..utils.progress import StageProgress
from .instruments import Instrument, TransformRecord
from .interface import Stages


class StageProgressInstrument(Instrument):
    """Prints ``stage N/10 <stage> <k> transforms, <s> s`` when a stage ends."""

    def __init__(self) -> None:
        self.progress = StageProgress([stage.value for stage in Stages])

    def on_build_start(self, resolved_config: dict[str, Any] | None) -> None:
        self.progress.current = None

    def before(self, record: TransformRecord, mod: nn.Module) -> None:
        self.progress.enter(record.stage.value)

    def on_build_end(self) -> None:
        self.progress.finish()
