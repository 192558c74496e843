"""The sequence interface: the packed batch (SequenceInfo), caches and their handlers."""

from .interface import CachedSequenceInterface
from .regions import ARG_NAMES, MODEL_INPUTS, BatchStep, Region
from .resources import (
    PagedKVResourceHandler,
    PagedResourceHandler,
    ResourceHandler,
    StateResourceHandler,
    resolve_cache_dtype,
)
from .sequence_info import SequenceInfo

__all__ = [
    "ARG_NAMES",
    "MODEL_INPUTS",
    "BatchStep",
    "CachedSequenceInterface",
    "PagedKVResourceHandler",
    "PagedResourceHandler",
    "Region",
    "ResourceHandler",
    "SequenceInfo",
    "StateResourceHandler",
    "resolve_cache_dtype",
]
