"""``TritonKernel``: one kernel, compiled on CUDA tensors, interpreted on CPU tensors.

Triton runs on a CPU only in its interpreter, and ``@triton.jit`` picks compiled or interpreted
once, when the function is decorated (``TRITON_INTERPRET`` at import time). In a test process
something has usually imported triton long before a test could set the variable. The fusion
kernels (RMSNorm, fused add + RMSNorm, RoPE) are therefore written as plain functions and
wrapped here: CUDA tensors launch the ``triton.jit`` version, CPU tensors an interpreted copy
made on first use, whatever the environment was at import. CPU launches still need the caller
to opt in with ``TRITON_INTERPRET=1`` (read at launch time): the interpreter is a test tool,
orders of magnitude slower than the torch reference ops.

Two rules keep a kernel valid in both modes: no nested ``@triton.jit`` helper calls (a
compiled helper cannot be called from interpreted code) and no ``tl.sum``/``tl.max`` (they are
``@triton.jit`` functions themselves): reduce with ``tl.reduce(x, axis, SUM_COMBINE)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

# The combine function behind ``tl.sum``: the interpreter recognizes it and sums with NumPy
# (a combine function of our own would be called once per element). Private in triton, hence
# the fallback to an equivalent one.
SUM_COMBINE = getattr(tl.standard, "_sum_combine", None)
if SUM_COMBINE is None:  # pragma: no cover - depends on the triton version

    @triton.jit
    def _add(a, b):
        return a + b

    SUM_COMBINE = _add


def cpu_interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set now (Triton kernels may then run on CPU)."""
    return bool(triton.knobs.runtime.interpret)


class TritonKernel:
    """``kernel[grid, device](*args)`` launches ``fn`` compiled (CUDA) or interpreted (CPU)."""

    def __init__(self, fn: Callable[..., None]):
        self.fn = fn
        self.compiled = triton.jit(fn)
        self._interpreted: Any = None

    @property
    def __name__(self) -> str:
        return self.fn.__name__

    def __getitem__(self, key: tuple[tuple[int, ...], torch.device]) -> Callable[..., Any]:
        grid, device = key
        if device.type == "cuda":
            return self.compiled[grid]
        if device.type != "cpu":
            raise RuntimeError(
                f"{self.__name__}: Triton kernels run on CUDA (or CPU for tests), not on {device}."
            )
        if not cpu_interpreter_enabled():
            raise RuntimeError(
                f"{self.__name__} got CPU tensors: Triton kernels run on CPU only in the Triton "
                "interpreter (slow; for tests). Set TRITON_INTERPRET=1 to allow it, or use the "
                "torch backend of the transform on CPU."
            )
        if self._interpreted is None:
            from triton.runtime.interpreter import InterpretedFunction

            self._interpreted = InterpretedFunction(self.fn)
        return self._interpreted[grid]
