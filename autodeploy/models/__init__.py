"""Model ingestion: factories (Hugging Face first), checkpoint loading, built-in tiny models."""

from . import hf  # noqa: F401  (registers AutoModelForCausalLM)
from .factory import ModelFactory, ModelFactoryRegistry, create_factory
from .sources import builtin_names, resolve_model_dir

__all__ = [
    "ModelFactory",
    "ModelFactoryRegistry",
    "builtin_names",
    "create_factory",
    "resolve_model_dir",
]
