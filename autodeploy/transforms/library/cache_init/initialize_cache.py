"""initialize_cache: allocate every cache registered on the CachedSequenceInterface."""

from __future__ import annotations

from ...base import BaseTransform
from ...facts import CACHE_INTERFACE, CACHE_RESOURCES, CACHES_ALLOCATED, INPUTS_ON_DEVICE
from ...interface import SharedConfig, Stages, TransformInfo
from ...registry import TransformRegistry


@TransformRegistry.register("initialize_cache")
class InitializeCache(BaseTransform):
    """Allocate the registered caches (paged KV pool: ``cm.initial_num_pages()`` pages).

    before: graph inputs ``kv_cache_<i>`` with handlers registered on ``cm`` but no tensors
    after:  the same graph; ``cm.caches`` holds one zero-filled tensor per handler, so
            ``gm(**cm.named_args)`` runs
    """

    stage = Stages.CACHE_INIT
    requires = (CACHE_INTERFACE,)
    uses = (CACHE_RESOURCES, INPUTS_ON_DEVICE)
    provides = (CACHES_ALLOCATED,)
    optional = False
    failure_hint = (
        "The caches may not fit: lower `max_batch_size`, `max_seq_len` or "
        "`kv_cache_config.max_tokens`."
    )

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        allocated = cm.initialize_resources()
        return gm, TransformInfo(
            skipped=allocated == 0, num_matches=allocated, is_clean=True, has_valid_shapes=True
        )
