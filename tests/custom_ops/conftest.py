"""Custom-op tests: run Triton kernels in the Triton interpreter when there is no GPU.

``TritonKernel`` reads ``TRITON_INTERPRET`` when a kernel is launched, so setting it here (or in
tests/conftest.py, which does the same for the whole suite) is enough whenever triton was
imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
