"""The pass manager: stages, transform base class and registry, and the InferenceOptimizer.

Importing this package registers every built-in transform (``library``) and loads plugins.
"""

from .base import BaseTransform
from .interface import SharedConfig, Stages, TransformConfig, TransformInfo
from .optimizer import InferenceOptimizer, build_summary
from .registry import TransformRegistry, parse_transform_configs

__all__ = [
    "BaseTransform",
    "InferenceOptimizer",
    "SharedConfig",
    "Stages",
    "TransformConfig",
    "TransformInfo",
    "TransformRegistry",
    "build_summary",
    "parse_transform_configs",
]

# Last, so library modules can import everything above from this package.
from . import library  # noqa: E402,F401  (registers the built-in transforms)
