"""Constants and conventions shared by the Triton attention kernels (``triton_*.py``), plus a
fix for the Triton interpreter (CPU tests) under NumPy >= 2.4.

Conventions used by every kernel of the Triton attention backend:

- the paged KV cache is ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (0 = K, 1 = V);
  key position ``j`` of sequence ``i`` lives in page ``cache_loc[cu_num_pages[i] + j // page_size]``
  at row ``j % page_size`` (page ids are widened to int64 before scaling by the page stride);
  masked positions look up page 0 (the reserved scratch page) and their loads are masked;
- page lookups are written inline rather than as a ``@triton.jit`` helper: in the interpreter
  (CPU tests) every nested jit call re-patches ``triton.language`` and costs milliseconds;
- softmax runs in base 2: logits are multiplied by ``log2(e)`` once, then ``exp2`` is used;
- the logit soft-cap ``cap * tanh(s / cap)`` is written ``cap - 2 cap / (exp(2 s / cap) + 1)``
  (no tanh in the interpreter; saturates to +-cap, never NaN);
- the running max starts at ``NEG_LARGE`` (finite) and masked logits are ``-inf``, so a block
  whose keys are all masked contributes ``exp2(-inf) = 0`` and never produces ``inf - inf``;
- every kernel accumulates in fp32 and casts only when storing (cache dtype or q's dtype).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Globals read inside @triton.jit code must be constexpr.
LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) == exp2(x * LOG2E)
NEG_LARGE = tl.constexpr(-1.0e30)  # initial running max; finite on purpose (see above)


def _fix_interpreter_scalar_index() -> None:
    """Let the Triton interpreter use loaded scalars as ``range`` bounds under NumPy >= 2.4.

    The interpreter keeps scalars as 1-element arrays and converts them with ``int(array)``,
    which NumPy 2.4 rejects for ndim > 0 (triton-lang/triton#9171, fixed upstream after
    triton 3.6). Only the interpreter (``TRITON_INTERPRET=1``) is touched, and only its
    ``__index__`` patch, which is re-applied here with an explicit element read.
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


if triton.knobs.runtime.interpret:
    _fix_interpreter_scalar_index()
