"""``torch.autocast`` is a no-op while exporting.

Model code (e.g. RoPE) disables autocast locally; traced, that becomes a higher-order wrapper
op around the subgraph, which hides the ops from pattern matching. We export without autocast
anyway, so the context can be dropped.
"""

import contextlib

import torch

from ..interface import ExportPatch, ExportPatchRegistry


class _NoAutocast(contextlib.nullcontext):
    def __init__(self, *args: object, **kwargs: object):
        super().__init__()

    def __call__(self, fn):  # also usable as a decorator, like torch.autocast
        return fn


@ExportPatchRegistry.register("autocast_noop")
class AutocastNoop(ExportPatch):
    def apply(self) -> None:
        self._original = torch.autocast
        torch.autocast = _NoAutocast  # type: ignore[misc, assignment]

    def revert(self) -> None:
        torch.autocast = self._original  # type: ignore[misc]
