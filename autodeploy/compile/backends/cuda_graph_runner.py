"""CudaGraphRunner: replay one captured CUDA graph per decode batch size, run the rest uncaptured.

What is captured
    For every size ``b`` in the batch-size list, largest first, the whole forward of a decode-only
    batch of ``b`` rows: ``cm.info.set_generate_only_batch(b)`` (padding rows on the scratch page;
    the host prepare hooks, e.g. FlashInfer ``plan()``, run here, outside the capture), a few
    warm-up runs, then one capture of ``model(**cm.named_args)``. All graphs share one memory pool.
    Warm-ups and capture run inside ``capture_phase(info.max_seq_len)`` (``shim/capture_phase.py``):
    ops that size launches from shapes (Triton decode's key-range splits) size them for the
    longest context instead of the one-page capture batch; ``stats.decode_splits`` and a DEBUG
    line per batch size say what they chose.

How inputs reach a graph (no copies)
    ``cm.named_args`` are views into the ``SequenceInfo`` device buffer, which is filled by one
    host-to-device copy per step, and the caches are persistent tensors. A view of a given
    batch size starts at the same address every step, so a graph captured on those views reads
    each step's new values. Before a replay the runner checks that every argument still has the
    address it had at capture (and, except for ``cache_loc``, the same shape); anything else runs
    uncaptured and is counted. ``cache_loc``'s length changes from step to step at a fixed batch
    size, so ops inside a graph must take page ranges from ``cu_num_pages`` and never depend on
    ``cache_loc``'s length. Host (CPU) inputs are read by Python at capture time and baked into
    the graph: the only one allowed is ``batch_info_host``, which is ``[0, 0, b]`` for every
    decode-only batch of ``b`` rows.

Padding and slicing
    After capture the runner calls ``info.set_padded_batch_sizes(sizes)``: from then on a
    decode-only batch of ``B`` rows is padded to the smallest captured size ``b >= B``. The runner
    returns the graph's static output (``b`` rows; valid until the next call) and
    ``info.gather_last_logits`` drops the padding rows.

Per step (replay path): a few Python attribute reads, one dict lookup, one address check per
argument, ``graph.replay()``. Nothing is copied or allocated.

Fallbacks (``stats.fallbacks``, per reason; each logged at DEBUG, the unexpected ones also once
as a warning): ``prefill`` (the batch has prefill/mixed sequences), ``batch_too_large`` (more
decode rows than the largest captured size), ``size_not_captured`` (decode rows not padded to a
captured size, e.g. padding was turned off), ``args_changed`` (other argument names or
positional arguments), ``address_changed`` (a buffer or cache moved, e.g. the KV pool was
re-allocated), ``shape_changed``.

The capture mechanism is injectable (``GraphCapture``, ``cuda_graph_capture.py``), so the
bookkeeping runs on CPU in tests; the counters are in ``cuda_graph_stats.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.fx import GraphModule

from ...shim.capture_phase import capture_phase
from ...utils.logger import logger
from ...utils.progress import ProgressBar
from ..registry import CompileBackendUnavailableError
from .cuda_graph_capture import GraphCapture, ReplayableGraph
from .cuda_graph_stats import CudaGraphStats, FallbackReason

# Arguments whose length may change between steps at one batch size (read by pointer only).
RAGGED_ARGS: frozenset[str] = frozenset({"cache_loc", "cache_loc_host"})
# The one host argument a graph may depend on: it is [0, 0, b] for every decode-only batch of b.
BAKED_HOST_ARG = "batch_info_host"


@dataclass
class CapturedGraph:
    """One captured decode step and what it was captured on."""

    batch_size: int
    graph: ReplayableGraph
    output: Any
    # (name, tensor at capture, data_ptr, shape or None for ragged args)
    checks: tuple[tuple[str, torch.Tensor, int, torch.Size | None], ...]

    def mismatch(self, kwargs: Mapping[str, Any]) -> str | None:
        """The reason ``kwargs`` cannot use this graph, or None."""
        if len(kwargs) != len(self.checks):
            return FallbackReason.ARGS_CHANGED
        for name, captured, pointer, shape in self.checks:
            value = kwargs.get(name)
            if value is captured:  # persistent tensors (caches): the very same object
                continue
            if not isinstance(value, torch.Tensor):
                return FallbackReason.ARGS_CHANGED
            if value.data_ptr() != pointer:
                return FallbackReason.ADDRESS_CHANGED
            if shape is not None and value.shape != shape:
                return FallbackReason.SHAPE_CHANGED
        return None


class CudaGraphRunner(nn.Module):
    """Replays captured decode steps; everything else runs ``model`` (see the module docstring).

    ``cm``: the ``CachedSequenceInterface`` (``.info`` and ``.named_args``) the model is called
    with. Call ``capture(batch_sizes)`` once, then use the runner as the model:
    ``runner(**cm.named_args)``. ``runner.model`` is the uncaptured model; ``runner.stats`` the
    counters (also ``runner.cuda_graph_stats``).
    """

    def __init__(
        self,
        model: nn.Module,
        cm: Any,
        capture: GraphCapture,
        num_warmup_runs: int = 3,
    ):
        super().__init__()
        self.model = model
        self._cm = cm
        self._info = cm.info
        self._capture = capture
        self._num_warmup_runs = num_warmup_runs
        self._graphs: dict[int, CapturedGraph] = {}
        self._largest = 0
        self._warned: set[str] = set()
        self.stats = CudaGraphStats()

    @property
    def cuda_graph_stats(self) -> CudaGraphStats:
        return self.stats

    @property
    def graphs(self) -> dict[int, CapturedGraph]:
        """Captured graphs by batch size (read-only use: tests poison ``output`` through it)."""
        return self._graphs

    # ------------------------------------------------------------------ capture

    def capture(self, batch_sizes: Sequence[int]) -> None:
        """Capture one graph per size (largest first, one shared pool); then turn on padding.

        On failure nothing is kept (no graphs, padding off) and the error propagates.
        """
        sizes = sorted(set(batch_sizes), reverse=True)
        info = self._info
        start = time.perf_counter()
        reserved_before = self._capture.reserved_bytes()
        pool = self._capture.new_pool()
        try:
            bar = ProgressBar(f"capturing {len(sizes)} CUDA graphs", len(sizes))
            with torch.inference_mode(), bar:
                for size in sizes:
                    info.set_generate_only_batch(size)  # host prepare hooks run here
                    self._graphs[size] = self._capture_one(size, pool)
                    bar.advance()
        except BaseException:
            self._graphs.clear()
            self.stats.decode_splits.clear()
            raise
        finally:
            info.set_example_sequence()  # leave a neutral batch behind
        self._largest = sizes[0]
        info.set_padded_batch_sizes(sizes)
        self.stats.captured_batch_sizes = tuple(sorted(sizes))
        self.stats.capture_s = time.perf_counter() - start
        self.stats.pool_bytes = max(0, self._capture.reserved_bytes() - reserved_before)
        logger.info(
            "captured %d CUDA graphs for decode batch sizes %s in %.2f s (%.1f MiB graph pool)",
            len(sizes),
            list(self.stats.captured_batch_sizes),
            self.stats.capture_s,
            self.stats.pool_bytes / 2**20,
        )

    def _capture_one(self, size: int, pool: Any) -> CapturedGraph:
        kwargs = self._cm.named_args
        self._check_capturable(kwargs)
        model = self.model

        def step() -> Any:
            return model(**kwargs)

        max_kv_len = self._info.max_seq_len
        with capture_phase(max_kv_len) as phase:
            self._capture.warm_up(step, self._num_warmup_runs)
            graph, output = self._capture.capture(step, pool)
        checks = tuple(
            (name, t, t.data_ptr(), None if name in RAGGED_ARGS else t.shape)
            for name, t in kwargs.items()
        )
        self.stats.decode_splits[size] = tuple(sorted(phase.decode_splits))
        logger.debug(
            "captured the decode step for batch size %d (decode key-range splits %s, sized for "
            "max_seq_len %d)",
            size,
            list(self.stats.decode_splits[size]) or "none",
            max_kv_len,
        )
        return CapturedGraph(size, graph, output, checks)

    def _check_capturable(self, kwargs: Mapping[str, Any]) -> None:
        """Host inputs other than batch_info_host would be baked into the graph: refuse them."""
        used = _used_graph_inputs(self.model)
        device = self._info.device
        baked = []
        for name, value in kwargs.items():
            if not isinstance(value, torch.Tensor):
                raise CompileBackendUnavailableError(
                    f"CUDA graphs: model input {name!r} is a {type(value).__name__}, not a "
                    "tensor; every input of a captured step must be a tensor."
                )
            if name == BAKED_HOST_ARG or (used is not None and name not in used):
                continue
            on_host = value.device.type == "cpu" and device.type != "cpu"
            if on_host or name.endswith("_host"):
                baked.append(name)
        if baked:
            raise CompileBackendUnavailableError(
                f"CUDA graphs: the model reads the host input(s) {', '.join(baked)}; their values "
                "would be frozen into the captured graph. Only batch_info_host may be read "
                "inside the graph; do host work in a host prepare hook "
                "(AttentionDescriptor.get_host_prepare_function) instead."
            )

    # ------------------------------------------------------------------ run

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        entry, reason = self._select(args, kwargs)
        if entry is None:
            self._count_fallback(reason)
            return self.model(*args, **kwargs)
        entry.graph.replay()
        self.stats.replays[entry.batch_size] += 1
        return entry.output

    def _select(self, args: tuple, kwargs: Mapping[str, Any]) -> tuple[CapturedGraph | None, str]:
        info = self._info
        if args:
            return None, FallbackReason.ARGS_CHANGED
        if not info.is_decode_only:
            return None, FallbackReason.PREFILL
        rows = info.batch_size
        entry = self._graphs.get(rows)
        if entry is None:
            too_large = rows > self._largest
            return None, FallbackReason.TOO_LARGE if too_large else FallbackReason.NOT_CAPTURED
        reason = entry.mismatch(kwargs)
        return (entry, "") if reason is None else (None, reason)

    def _count_fallback(self, reason: str) -> None:
        self.stats.fallbacks[reason] += 1
        info = self._info
        if reason not in FallbackReason.EXPECTED and reason not in self._warned:
            self._warned.add(reason)
            logger.warning(
                "CUDA graph not used (%s) for a batch of %d rows (decode only: %s): %s. Further "
                "occurrences are counted in cuda_graph_stats and logged at DEBUG.",
                reason,
                info.batch_size,
                info.is_decode_only,
                FallbackReason.HINTS.get(reason, reason),
            )
        elif logger.isEnabledFor(logging.DEBUG):  # the check keeps the fallback path cheap
            logger.debug(
                "CUDA graph not used (%s): %d rows (%d sequences), decode only: %s",
                reason,
                info.batch_size,
                info.num_sequences,
                info.is_decode_only,
            )


def _used_graph_inputs(model: nn.Module) -> set[str] | None:
    """Names of the placeholders of the model's graph that have users (None: cannot tell)."""
    gm = next((m for m in model.modules() if isinstance(m, GraphModule)), None)
    if gm is None:
        return None
    return {n.target for n in gm.graph.nodes if n.op == "placeholder" and n.users}
