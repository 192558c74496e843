"""CompileBackendRegistry and the CompilerBackend base class.

A compile backend turns the built module into the module that serves requests:
``CompileBackendRegistry.get(name)(model, cm, **options).compile() -> nn.Module``. ``cm`` is the
``CachedSequenceInterface`` (None when the build has none); backends that capture CUDA graphs use
``cm.info.set_generate_only_batch(bs)`` and ``cm.named_args`` to make sample inputs, and
``cm.info.set_padded_batch_sizes(sizes)`` so the runtime's decode batches hit a captured size.

A backend that cannot work in this build (a CUDA-only backend on CPU, a model whose decode step
cannot be captured) raises ``CompileBackendUnavailableError``: ``compile_model`` reports it as a
build problem (an error in strict mode) and runs the model uncompiled instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from ..utils.errors import BuildError
from ..utils.registry import Registry

if TYPE_CHECKING:
    from ..shim.interface import CachedSequenceInterface


class CompileBackendUnavailableError(BuildError):
    """The backend cannot compile this model here; the message says why and what to use."""


class CompilerBackend(ABC):
    """Subclass, implement ``compile``, register with ``@CompileBackendRegistry.register``."""

    def __init__(self, model: nn.Module, cm: CachedSequenceInterface | None, **options: Any):
        self.model = model
        self.cm = cm
        self.options = options

    @abstractmethod
    def compile(self) -> nn.Module:
        """Return the module to run (called once, after every other transform)."""


CompileBackendRegistry: Registry[type[CompilerBackend]] = Registry(
    "compile backend", lookup_hint="Set `compile_backend` (or compile_model.backend)"
)
