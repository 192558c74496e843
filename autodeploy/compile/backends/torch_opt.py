"""``torch-opt``: ``torch.compile(dynamic=True)``, then CUDA graphs of the compiled decode step.

The compiled model is what the graphs capture and what prefill/mixed batches (and decode
batches above the largest captured size) run. The warm-up runs before each capture compile the
decode shapes, so no compilation happens inside a capture. Options: those of ``torch-cudagraph``
plus ``torch_compile_backend``. CUDA only (see ``torch_cudagraph.py`` for what happens elsewhere).
"""

from __future__ import annotations

import torch.nn as nn

from ..registry import CompileBackendRegistry
from .torch_compile import compile_dynamic, torch_compile_backend_option
from .torch_cudagraph import TorchCudagraphBackend

# Shapes beyond the captured decode sizes: prefill [1, T], batch 1, a larger decode batch.
_EXTRA_SHAPES = 8


@CompileBackendRegistry.register("torch-opt")
class TorchOptBackend(TorchCudagraphBackend):
    """``torch-cudagraph`` over ``torch.compile(model, dynamic=True)``."""

    backend_name = "torch-opt"

    def model_to_capture(self, batch_sizes: list[int]) -> nn.Module:
        return compile_dynamic(
            self.model,
            torch_compile_backend_option(self.options),
            min_recompile_limit=len(batch_sizes) + _EXTRA_SHAPES,
        )
