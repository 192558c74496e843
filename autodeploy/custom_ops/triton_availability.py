"""Whether Triton kernels can run on a device in this process (importable without triton).

Triton kernels run compiled on CUDA and, for tests, in the Triton interpreter on CPU when
``TRITON_INTERPRET=1`` is set (``_triton_kernel.TritonKernel`` switches per launch). Every
Triton backend's ``unavailable(device)`` starts here.
"""

from __future__ import annotations

import importlib.util

import torch

TRITON_INSTALL_HINT = "triton is not installed (pip install 'autodeploy[triton]')"


def triton_unavailable(device: torch.device | None) -> str | None:
    """Why Triton kernels cannot run on ``device`` (None: they can; ``device=None``: is triton
    installed at all)."""
    if importlib.util.find_spec("triton") is None:
        return TRITON_INSTALL_HINT
    if device is None or device.type == "cuda":
        return None
    if device.type == "cpu":
        from ._triton_kernel import cpu_interpreter_enabled

        if cpu_interpreter_enabled():
            return None
        return (
            "needs a CUDA device but the graph runs on cpu (set TRITON_INTERPRET=1 to run "
            "Triton kernels in the Triton interpreter on CPU: slow, tests only)"
        )
    return f"needs a CUDA device but the graph runs on {device.type}"
