"""``TritonKernel``: one kernel, compiled on CUDA tensors, interpreted on CPU tensors.

Triton runs on a CPU only in its interpreter, and ``@triton.jit`` picks compiled or interpreted
once, when the function is decorated (``TRITON_INTERPRET`` at import time). In a test process
something has usually imported triton long before a test could set the variable. The fusion
kernels (RMSNorm, fused add + RMSNorm, RoPE) are therefore written as plain functions and
wrapped here: CUDA tensors launch the ``triton.jit`` version, CPU tensors an interpreted copy
made on first use, whatever the environment was at import. CPU launches still need the caller
to opt in with ``TRITON_INTERPRET=1`` (read at launch time): the interpreter is a test tool,
orders of magnitude slower than the torch reference ops.

This is the one way Triton kernels run on CPU in this package (the fusion kernels and the
paged-attention kernels alike). Two rules keep a kernel valid in both modes: no nested
``@triton.jit`` helper calls (a compiled helper cannot be called from interpreted code; this
includes ``tl.zeros`` and ``tl.cdiv``) and no ``tl.sum``/``tl.max`` (``@triton.jit`` functions
themselves): reduce with ``tl.reduce(x, axis, SUM_COMBINE)`` / ``MAX_COMBINE``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

from ..utils.numbers import next_power_of_2  # noqa: F401  (re-exported for the kernels)

# The combine function behind ``tl.sum``: the interpreter recognizes it and sums with NumPy
# (a combine function of our own would be called once per element). Private in triton, hence
# the fallback to an equivalent one.
SUM_COMBINE = getattr(tl.standard, "_sum_combine", None)
if SUM_COMBINE is None:  # pragma: no cover - depends on the triton version

    @triton.jit
    def _add(a, b):
        return a + b

    SUM_COMBINE = _add


# ``tl.max``'s combine function, recognized by the interpreter like SUM_COMBINE.
MAX_COMBINE = tl.standard._elementwise_max


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

            _fix_interpreter_scalar_index()
            self._interpreted = InterpretedFunction(self.fn)
        return self._interpreted[grid]


def _fix_interpreter_scalar_index() -> None:
    """Let the Triton interpreter use loaded scalars as ``range`` bounds under NumPy >= 2.4.

    The interpreter keeps scalars as 1-element arrays and converts them with ``int(array)``,
    which NumPy 2.4 rejects for ndim > 0 (triton-lang/triton#9171, fixed upstream after
    triton 3.6). Only the interpreter is touched, and only its ``__index__`` patch, which is
    re-applied here with an explicit element read.
    """
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is None or getattr(patch_tensor, "_index_fixed", False):
        return

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._index_fixed = True
    interpreter._patch_lang_tensor = patched
