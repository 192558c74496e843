"""``torch-compile``: ``torch.compile(model, dynamic=True)``, on any device.

Options (``compile_model`` config): ``torch_compile_backend`` (default ``"inductor"``, which
generates fused kernels; ``"aot_eager"`` / ``"eager"`` run the traced graph without codegen, for
debugging).

Compilation is lazy: the first call of each shape class compiles (with dynamic shapes one graph
covers every batch size and token count; a dimension of size 1 is specialised, so the first
prefill ``[1, T]``, the first decode ``[B, 1]`` and batch 1 each compile once). Dynamo's
recompile limit is raised to at least ``min_recompile_limit`` where a caller needs more shapes
(``torch-opt``: one per captured batch size).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ...utils.errors import ConfigError
from ...utils.logger import logger
from ...utils.suggest import did_you_mean
from ..registry import CompileBackendRegistry, CompilerBackend

DEFAULT_TORCH_COMPILE_BACKEND = "inductor"


def compile_dynamic(
    model: nn.Module, backend: str = DEFAULT_TORCH_COMPILE_BACKEND, min_recompile_limit: int = 0
) -> nn.Module:
    """``torch.compile(model, dynamic=True, backend=backend)`` after checking ``backend``."""
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ConfigError(
            f"compile_model.torch_compile_backend: unknown torch.compile backend {backend!r}."
            f"{did_you_mean(backend, known)} Known: {', '.join(known)}."
        )
    _raise_recompile_limit(min_recompile_limit)
    logger.info("torch.compile(dynamic=True, backend=%r)", backend)
    return torch.compile(model, dynamic=True, backend=backend)


def _raise_recompile_limit(minimum: int) -> None:
    config = torch._dynamo.config
    # torch >= 2.6 calls it recompile_limit; older releases cache_size_limit.
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    current = getattr(config, name)
    if minimum > current:
        setattr(config, name, minimum)
        logger.info("raised torch._dynamo.config.%s from %d to %d", name, current, minimum)


def torch_compile_backend_option(options: dict[str, Any]) -> str:
    return str(options.get("torch_compile_backend") or DEFAULT_TORCH_COMPILE_BACKEND)


@CompileBackendRegistry.register("torch-compile")
class TorchCompileBackend(CompilerBackend):
    """The model under ``torch.compile(dynamic=True)``; prefill and decode both compiled."""

    def compile(self) -> nn.Module:
        return compile_dynamic(self.model, torch_compile_backend_option(self.options))
