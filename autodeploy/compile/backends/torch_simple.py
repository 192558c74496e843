"""``torch-simple``: run the graph eagerly, as built (no compilation, no CUDA graphs)."""

from __future__ import annotations

import torch.nn as nn

from ..registry import CompileBackendRegistry, CompilerBackend


@CompileBackendRegistry.register("torch-simple")
class TorchSimpleBackend(CompilerBackend):
    """Returns the model unchanged: the reference for every other backend, and the debug path."""

    def compile(self) -> nn.Module:
        return self.model
