"""FlashInfer itself, imported on first use: availability, wrappers, the KV-cache append kernel.

Everything that touches the ``flashinfer`` package lives here, so the rest of the backend (and
the whole of ``autodeploy``) imports without it. Facts used (FlashInfer 0.6):

- ``BatchPrefillWithPagedKVCacheWrapper`` / ``BatchDecodeWithPagedKVCacheWrapper`` with
  ``kv_layout="HND"`` take our 5-D cache ``[num_pages, 2, num_kv_heads, page_size, head_dim]``
  as is (index 0 = K, 1 = V).
- All wrappers of a device share one float workspace (split-KV partial results; the wrappers run
  one after another on one stream). Each wrapper has its own 8 MiB integer workspace (its plan).
- The fa2 kernels are used for prefill and for tensor-core decode (``backend="fa2"``): they
  implement causal masking aligned to the end of each sequence, ``window_left``, soft-cap and a
  custom scale on every GPU from sm80; ``auto`` would pick fa3 on Hopper, whose feature set and
  JIT variants differ.
- ``append_paged_kv_cache`` writes token i's k/v at page
  ``indices[indptr[batch_indices[i]] + positions[i] // page_size]``, row
  ``positions[i] % page_size``; its ``kv_last_page_len`` argument only gives the batch size.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch
from torch import Tensor

from ...utils.errors import ConfigError
from .flashinfer_planner import StaticDecodeWrapper

# The float workspace shared by all wrappers of a device. FlashInfer recommends 128 MiB; a
# split-KV prefill needs num_qo_heads * tiles * 128 * head_dim * 4 bytes (tiles <= 2 * SMs /
# num_kv_heads: ~70 MiB for Llama-3.1-8B on an H100), so 256 MiB leaves room for wider models.
WORKSPACE_BYTES = 256 << 20
KERNEL_BACKEND = "fa2"
KV_LAYOUT = "HND"
INSTALL_HINT = 'pip install "autodeploy[flashinfer]" (the flashinfer-python package)'


def flashinfer_available() -> bool:
    """Whether the ``flashinfer`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("flashinfer") is not None


@functools.cache
def _flashinfer() -> Any:
    if not flashinfer_available():
        raise ConfigError(f"attn_backend 'flashinfer' needs FlashInfer: {INSTALL_HINT}.")
    import flashinfer

    return flashinfer


class FlashInferKernels:
    """The real ``WrapperFactory`` of one CUDA device, plus the cache append kernel."""

    def __init__(self, device: torch.device):
        if device.type != "cuda":
            raise ValueError(
                f"flashinfer attention runs on CUDA devices only, got {device}; use "
                "attn_backend 'torch' or 'triton' on CPU."
            )
        self.flashinfer = _flashinfer()
        self.device = device
        self.workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)

    def prefill(self) -> Any:
        return self.flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            self.workspace, kv_layout=KV_LAYOUT, backend=KERNEL_BACKEND
        )

    def decode(self, use_tensor_cores: bool) -> Any:
        return self.flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace,
            kv_layout=KV_LAYOUT,
            use_tensor_cores=use_tensor_cores,
            backend=KERNEL_BACKEND,
        )

    def static_decode(
        self, batch_size: int, max_pages: int, use_tensor_cores: bool
    ) -> StaticDecodeWrapper:
        int32 = {"dtype": torch.int32, "device": self.device}
        indptr = torch.arange(batch_size + 1, **int32)  # one (scratch) page per row until planned
        indices = torch.zeros(max_pages, **int32)
        last_page_len = torch.ones(batch_size, **int32)
        wrapper = self.flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace,
            kv_layout=KV_LAYOUT,
            use_cuda_graph=True,
            use_tensor_cores=use_tensor_cores,
            paged_kv_indptr_buffer=indptr,
            paged_kv_indices_buffer=indices,
            paged_kv_last_page_len_buffer=last_page_len,
            backend=KERNEL_BACKEND,
        )
        return StaticDecodeWrapper(wrapper, indptr, indices, last_page_len)

    def append(
        self,
        k: Tensor,
        v: Tensor,
        batch_indices: Tensor,
        positions: Tensor,
        kv_cache: Tensor,
        cache_loc: Tensor,
        cu_num_pages: Tensor,
        last_page_len: Tensor,
    ) -> None:
        """Write the new tokens' k/v ([T, num_kv_heads, head_dim]) into their pages."""
        self.flashinfer.append_paged_kv_cache(
            k,
            v,
            batch_indices,
            positions,
            kv_cache,
            cache_loc,
            cu_num_pages,
            last_page_len,
            kv_layout=KV_LAYOUT,
        )
