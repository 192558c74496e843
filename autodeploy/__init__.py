"""autodeploy: export an unmodified Hugging Face / PyTorch LLM to a graph and make it fast to serve.

Public API: ``LLM``, ``AsyncLLM`` (streaming, for servers) and ``SamplingParams`` for
generation; ``autodeploy.transforms`` for the pass manager
(``InferenceOptimizer(factory, cfg)(cm)``).
"""

from typing import Any

__version__ = "0.1.0"

# Registration side effects, in dependency order: ops, then things that refer to them.
from . import custom_ops, export, models, transforms  # noqa: E402,F401
from .plugins import load_plugins  # noqa: E402

load_plugins()

_LAZY = {
    "LLM": ("runtime.llm", "LLM"),
    "AsyncLLM": ("runtime.async_llm", "AsyncLLM"),
    "SamplingParams": ("runtime.sampling", "SamplingParams"),
}


def __getattr__(name: str) -> Any:
    """``LLM``/``SamplingParams`` import the runtime only when first used."""
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module_name}", __name__), attr)
    raise AttributeError(f"module 'autodeploy' has no attribute {name!r}")


__all__ = ["AsyncLLM", "LLM", "SamplingParams", "__version__", "load_plugins"]
