"""Compile backends: the last step of the pipeline (``compile_model``)."""

from . import backends  # noqa: F401  (registers the built-in backends)
from .registry import CompileBackendRegistry, CompilerBackend

__all__ = ["CompileBackendRegistry", "CompilerBackend"]
