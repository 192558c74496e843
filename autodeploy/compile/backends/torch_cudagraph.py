"""``torch-cudagraph``: one CUDA graph per decode batch size; everything else runs as built.

Options (``compile_model`` config):

- ``cuda_graph_batch_sizes``: the decode batch sizes to capture. ``None``: 1, 2, 4, 8, ... below
  the limit, plus the limit itself, where the limit is ``min(max_batch_size, max_num_tokens)``.
  Sizes above the limit can never occur; they are dropped and the limit is captured instead (so
  the batches they were meant for are still covered).
- ``cuda_graph_warmup_runs``: uncaptured runs before each capture (default 3).

Needs a ``CachedSequenceInterface`` on a CUDA device. On another device, or when the decode step
cannot be captured (e.g. an op syncs with the host, like the ``torch`` reference attention), it
raises ``CompileBackendUnavailableError`` and ``compile_model`` reports the problem and runs the
model uncaptured. The capture itself, padding and fallback counting: ``cuda_graph_runner.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from ...utils.errors import ConfigError
from ...utils.logger import logger
from ...utils.numbers import powers_of_two_below
from ..registry import CompileBackendRegistry, CompileBackendUnavailableError, CompilerBackend
from .cuda_graph_capture import CudaGraphCapture, GraphCapture
from .cuda_graph_runner import CudaGraphRunner

DEFAULT_WARMUP_RUNS = 3


def batch_size_limit(info: Any) -> int:
    """The largest decode batch a step can hold: ``min(max_batch_size, max_num_tokens)``."""
    return min(int(info.max_batch_size), int(info.max_num_tokens))


def default_batch_sizes(limit: int) -> list[int]:
    """Powers of two below ``limit``, then ``limit``: 1, 2, 4, ..., limit."""
    return [*powers_of_two_below(limit), limit]


def resolve_batch_sizes(requested: Sequence[int] | None, limit: int) -> list[int]:
    """The sizes to capture, ascending (see the module docstring for the rules)."""
    if limit < 1:
        raise ConfigError(f"CUDA graphs: the batch size limit must be >= 1, got {limit}.")
    if requested is None:
        return default_batch_sizes(limit)
    sizes = sorted({int(size) for size in requested})
    if not sizes or sizes[0] < 1:
        raise ConfigError(
            f"compile_model.cuda_graph_batch_sizes={list(requested)}: give at least one size, "
            "every size >= 1 (or null for the default 1, 2, 4, ... up to max_batch_size)."
        )
    too_large = [size for size in sizes if size > limit]
    if too_large:
        sizes = sorted({size for size in sizes if size <= limit} | {limit})
        logger.info(
            "cuda_graph_batch_sizes: %s exceed the largest possible decode batch (%d = "
            "min(max_batch_size, max_num_tokens)); capturing %s",
            too_large,
            limit,
            sizes,
        )
    return sizes


@CompileBackendRegistry.register("torch-cudagraph")
class TorchCudagraphBackend(CompilerBackend):
    """Decode-only batches replay a captured CUDA graph; prefill/mixed batches run eagerly."""

    backend_name = "torch-cudagraph"

    def compile(self) -> nn.Module:
        cm = self.cm
        if cm is None:
            raise ConfigError(
                f"compile backend {self.backend_name!r} needs the CachedSequenceInterface: build "
                "with InferenceOptimizer(factory, cfg)(cm)."
            )
        self.check_device(cm.device)
        sizes = resolve_batch_sizes(
            self.options.get("cuda_graph_batch_sizes"), batch_size_limit(cm.info)
        )
        warmup_runs = self.options.get("cuda_graph_warmup_runs")
        runner = CudaGraphRunner(
            self.model_to_capture(sizes),
            cm,
            self.make_capture(cm.device),
            num_warmup_runs=DEFAULT_WARMUP_RUNS if warmup_runs is None else int(warmup_runs),
        )
        try:
            runner.capture(sizes)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            raise CompileBackendUnavailableError(
                f"compile backend {self.backend_name!r}: capturing the decode step failed "
                f"({type(exc).__name__}: {exc}). A captured step must not synchronise with the "
                "host (no .item()/.tolist() on GPU tensors; the 'torch' reference attention "
                "backend does this): use attn_backend 'triton' or 'flashinfer', or "
                "compile_backend 'torch-simple' / 'torch-compile'."
            ) from exc
        return runner

    def check_device(self, device: torch.device) -> None:
        """Raise ``CompileBackendUnavailableError`` unless ``device`` is a usable CUDA device."""
        if device.type != "cuda" or not torch.cuda.is_available():
            where = f"the model runs on {device}"
            if device.type == "cuda":
                where += " but CUDA is not available in this process"
            raise CompileBackendUnavailableError(
                f"compile backend {self.backend_name!r} captures CUDA graphs, but {where}. "
                f"Use compile_backend 'torch-simple' or 'torch-compile' there, or build on a "
                "GPU (device='cuda')."
            )

    def model_to_capture(self, batch_sizes: list[int]) -> nn.Module:
        """The module whose decode step is captured (and that runs uncaptured batches)."""
        return self.model

    def make_capture(self, device: torch.device) -> GraphCapture:
        return CudaGraphCapture(device)
