"""initialize_cache: allocate every cache registered on the CachedSequenceInterface."""

from __future__ import annotations

from ....utils.errors import ConfigError
from ...base import BaseTransform
from ...interface import SharedConfig, TransformInfo
from ...registry import TransformRegistry


@TransformRegistry.register("initialize_cache")
class InitializeCache(BaseTransform):
    """Allocate the registered caches (paged KV pool: ``cm.initial_num_pages()`` pages).

    before: graph inputs ``kv_cache_<i>`` with handlers registered on ``cm`` but no tensors
    after:  the same graph; ``cm.caches`` holds one zero-filled tensor per handler, so
            ``gm(**cm.named_args)`` runs
    """

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        if cm is None:
            raise ConfigError("initialize_cache needs a CachedSequenceInterface.")
        allocated = cm.initialize_resources()
        return gm, TransformInfo(
            skipped=allocated == 0, num_matches=allocated, is_clean=True, has_valid_shapes=True
        )
