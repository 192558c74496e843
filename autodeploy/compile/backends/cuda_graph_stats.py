"""Why a CUDA-graph runner ran a call uncaptured, and the counters it keeps (per reason, per
captured batch size) for the runtime, the benchmark and logs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class FallbackReason:
    """Why a call ran uncaptured (the keys of ``CudaGraphStats.fallbacks``)."""

    PREFILL = "prefill"
    TOO_LARGE = "batch_too_large"
    NOT_CAPTURED = "size_not_captured"
    ARGS_CHANGED = "args_changed"
    ADDRESS_CHANGED = "address_changed"
    SHAPE_CHANGED = "shape_changed"

    EXPECTED = frozenset({PREFILL, TOO_LARGE})  # normal operation: logged at DEBUG only
    HINTS = {
        NOT_CAPTURED: "decode batches are not padded to a captured size; something turned off "
        "cm.info.set_padded_batch_sizes",
        ARGS_CHANGED: "the model is called with other arguments than at capture (call it as "
        "model(**cm.named_args); activate every arg before compile_model)",
        ADDRESS_CHANGED: "an input buffer or cache moved after capture (e.g. the KV pool was "
        "re-allocated); caches must not be re-allocated after compile_model",
        SHAPE_CHANGED: "an input has another shape than at capture",
    }


@dataclass
class CudaGraphStats:
    """Counters of a ``CudaGraphRunner`` (for the runtime, the benchmark and logs)."""

    captured_batch_sizes: tuple[int, ...] = ()
    capture_s: float = 0.0
    pool_bytes: int = 0  # device memory reserved by the capture (graph pool), CUDA only
    # captured batch size -> key-range split counts the decode attention launched with (empty
    # for backends that do not split, e.g. FlashInfer)
    decode_splits: dict[int, tuple[int, ...]] = field(default_factory=dict)
    replays: Counter[int] = field(default_factory=Counter)  # captured batch size -> replays
    fallbacks: Counter[str] = field(default_factory=Counter)  # FallbackReason -> calls

    @property
    def num_replays(self) -> int:
        return sum(self.replays.values())

    @property
    def num_fallbacks(self) -> int:
        return sum(self.fallbacks.values())

    def reset(self) -> None:
        """Zero the call counters (keeps what describes the capture)."""
        self.replays.clear()
        self.fallbacks.clear()

    def as_dict(self) -> dict[str, Any]:
        return {
            "captured_batch_sizes": list(self.captured_batch_sizes),
            "capture_s": round(self.capture_s, 3),
            "pool_mib": round(self.pool_bytes / 2**20, 1),
            "decode_splits_by_batch_size": {
                str(k): list(v) for k, v in sorted(self.decode_splits.items())
            },
            "replays": self.num_replays,
            "replays_by_batch_size": {str(k): v for k, v in sorted(self.replays.items())},
            "fallbacks": self.num_fallbacks,
            "fallbacks_by_reason": dict(sorted(self.fallbacks.items())),
        }
