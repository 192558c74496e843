"""Custom-op tests: run Triton kernels in the Triton interpreter when there is no GPU.

Triton decides interpreter-or-compiler when a ``@triton.jit`` function is defined, i.e. when
``triton`` (and autodeploy's kernel modules) are first imported. This conftest is loaded before
the test modules of this folder are imported, so it covers ``pytest tests/custom_ops``. In a
whole-suite run an earlier folder may already have imported triton (``import autodeploy`` and
``torch._dynamo`` both do); test_triton_attention.py then re-runs its CPU cases in a
subprocess. Setting ``TRITON_INTERPRET=1`` in tests/conftest.py makes that unnecessary.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
