"""Constants and conventions shared by the Triton attention kernels (``triton_*.py``).

Conventions used by every kernel of the Triton attention backend:

- the paged KV cache is ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (0 = K, 1 = V);
  key position ``j`` of sequence ``i`` lives in page ``cache_loc[cu_num_pages[i] + j // page_size]``
  at row ``j % page_size`` (page ids are widened to int64 before scaling by the page stride);
  masked positions look up page 0 (the reserved scratch page) and their loads are masked;
- kernels are plain functions wrapped in ``TritonKernel`` (``_triton_kernel.py``: compiled on
  CUDA, interpreted on CPU under ``TRITON_INTERPRET=1``), so they call no ``@triton.jit``
  helper (page lookups are inline, ``tl.full`` instead of ``tl.zeros``) and reduce with
  ``tl.reduce(x, axis, SUM_COMBINE / MAX_COMBINE)`` instead of ``tl.sum`` / ``tl.max``;
- softmax runs in base 2: logits are multiplied by ``log2(e)`` once, then ``exp2`` is used;
- the logit soft-cap ``cap * tanh(s / cap)`` is written ``cap - 2 cap / (exp(2 s / cap) + 1)``
  (no tanh in the interpreter; saturates to +-cap, never NaN);
- the running max starts at ``NEG_LARGE`` (finite) and masked logits are ``-inf``, so a block
  whose keys are all masked contributes ``exp2(-inf) = 0`` and never produces ``inf - inf``;
- every kernel accumulates in fp32 and casts only when storing (cache dtype or q's dtype).
"""

from __future__ import annotations

import triton.language as tl

# Globals read inside @triton.jit code must be constexpr.
LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) == exp2(x * LOG2E)
NEG_LARGE = tl.constexpr(-1.0e30)  # initial running max; finite on purpose (see above)
