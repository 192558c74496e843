"""The CUDA-graph capture phase, as the ops see it: the longest key range a captured step serves.

A CUDA graph freezes every decision an op makes on the host while it is captured. Ops that size
their launches from tensor shapes (the Triton decode kernel splits each sequence's key range by an
estimate of its length) see, at capture, a batch of padding rows one page long; the graph would
keep that choice for every later replay, however long the contexts grow. So the CUDA-graph runner
opens a ``capture_phase`` around the warm-ups and the capture of each batch size, with the longest
key range a replay can meet (``max_seq_len``), and those ops read it with ``active_capture_phase``.

The phase is scoped: a ``ContextVar`` set on entry and reset on exit (also on error), so nothing
outlives the capture and uncaptured calls never see it. Ops note what they chose in the phase
(``decode_splits``) so the runner can report it per captured batch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..utils.errors import ConfigError


@dataclass
class CapturePhase:
    """What a captured step must be ready for, and what the ops decided for it."""

    max_kv_len: int  # the longest key range (tokens) of any sequence a replay can serve
    decode_splits: set[int] = field(default_factory=set)  # key-range splits launched (decode)


_ACTIVE: ContextVar[CapturePhase | None] = ContextVar("autodeploy_capture_phase", default=None)


@contextmanager
def capture_phase(max_kv_len: int) -> Iterator[CapturePhase]:
    """Make ``CapturePhase(max_kv_len)`` the active phase for the duration of the block."""
    if int(max_kv_len) < 1:
        raise ConfigError(f"capture_phase: max_kv_len must be >= 1, got {max_kv_len}.")
    phase = CapturePhase(int(max_kv_len))
    token = _ACTIVE.set(phase)
    try:
        yield phase
    finally:
        _ACTIVE.reset(token)


def active_capture_phase() -> CapturePhase | None:
    """The phase of the capture in progress, or None outside a capture."""
    return _ACTIVE.get()
