"""resize_kv_cache: size the paged KV pool from the GPU memory left after a full-size forward."""

from __future__ import annotations

import torch

from ....utils.errors import ConfigError
from ....utils.logger import logger
from ...base import BaseTransform
from ...facts import CACHE_INTERFACE, CACHES_ALLOCATED, WEIGHTS_LOADED
from ...interface import SharedConfig, Stages, TransformInfo
from ...registry import TransformRegistry


@TransformRegistry.register("resize_kv_cache")
class ResizeKVCache(BaseTransform):
    """On CUDA: run one forward at ``max_num_tokens``, measure its peak memory, then give the
    paged pool ``kv_cache_config.free_gpu_memory_fraction`` of the free memory that is left.

    Skipped (the pool keeps its fixed size) on CPU, when ``kv_cache_config.max_tokens`` is set,
    or without paged caches.

    before: the paged pool has ``cm.initial_num_pages()`` pages
    after:  the graph is unchanged; the pool has ``cm.num_pages`` pages sized from free memory
    """

    stage = Stages.CACHE_INIT
    requires = (CACHE_INTERFACE, WEIGHTS_LOADED, CACHES_ALLOCATED)
    failure_hint = (
        "Lower `kv_cache_config.free_gpu_memory_fraction` or `max_num_tokens`, or fix the pool "
        "size with `kv_cache_config.max_tokens` (resizing is then skipped)."
    )

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        unchanged = TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)
        if not cm.needs_resize():
            reason = (
                "no paged caches"
                if not cm.paged_resources
                else "kv_cache_config.max_tokens is set"
                if cm.kv_cache_config.max_tokens
                else f"device {cm.device} (free memory is only measured on CUDA)"
            )
            logger.info(
                "skipped (%s): the KV pool keeps its fixed size of %s pages", reason, cm.num_pages
            )
            return gm, unchanged
        if not cm.caches:
            raise ConfigError("resize_kv_cache runs after initialize_cache; enable it first.")

        device = cm.device
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        cm.info.set_max_num_tokens_sample()
        with torch.inference_mode():
            gm(**cm.named_args)
        torch.cuda.synchronize(device)
        forward_bytes = torch.cuda.max_memory_allocated(device) - before
        cm.info.set_example_sequence()  # leave a small, valid batch behind
        cm.resize_from_free_memory(forward_bytes)
        return gm, TransformInfo(num_matches=1, is_clean=True, has_valid_shapes=True)
