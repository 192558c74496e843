"""The sequence interface: the packed batch (SequenceInfo), caches and their handlers."""

from .interface import CachedSequenceInterface
from .resources import (
    PagedKVResourceHandler,
    ResourceHandler,
    StateResourceHandler,
    resolve_cache_dtype,
)
from .sequence_info import ARG_NAMES, MODEL_INPUTS, SequenceInfo

__all__ = [
    "ARG_NAMES",
    "MODEL_INPUTS",
    "CachedSequenceInterface",
    "PagedKVResourceHandler",
    "ResourceHandler",
    "SequenceInfo",
    "StateResourceHandler",
    "resolve_cache_dtype",
]
