"""What a FlashInfer ``plan()`` depends on: the layer's parameters and the step's page table.

- ``LayerPlanConfig``: what ``plan()`` fixes besides the batch (heads, head_dim, page size, dtype,
  window, soft-cap, scale); layers that share one share wrappers and one plan per step.
- ``StepPlanInputs``: the step's page table split into prefill and decode rows, read once per
  step from ``SequenceInfo`` (``step_inputs_from_info``) or, for a call the host hook did not
  plan, from the op's own tensors (``step_inputs_from_tensors``).

``flashinfer_planner.py`` uses them to decide when to plan (see its docstring).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ...shim.sequence_info import SequenceInfo

# Decode with FlashInfer's tensor-core (prefill) kernels from this query-per-kv-head group size
# on: they fold the group into the MMA's row dimension, which pays off from about 4 rows; the
# CUDA-core decode kernel is compiled for group sizes 1, 2, 3, 4 and 8 only.
TENSOR_CORE_MIN_GROUP = 4


class PlanningError(RuntimeError):
    """The cached op cannot get a plan for its batch (e.g. inside a CUDA-graph capture)."""


@dataclass(frozen=True)
class LayerPlanConfig:
    """The attention parameters ``plan()`` fixes; one set of wrappers per distinct value."""

    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: torch.dtype  # query, KV cache and output dtype
    window_left: int = -1  # FlashInfer: keys j >= p - window_left are visible; -1: no window
    logits_soft_cap: float = 0.0  # 0.0: no soft-cap
    sm_scale: float = 1.0

    @classmethod
    def from_call(
        cls,
        num_qo_heads: int,
        head_dim: int,
        num_kv_heads: int,
        page_size: int,
        dtype: torch.dtype,
        scale: float | None,
        sliding_window: int | None,
        logit_cap: float | None,
    ) -> LayerPlanConfig:
        """The config of a cached-op call (contract semantics -> FlashInfer's parameters)."""
        return cls(
            num_qo_heads=int(num_qo_heads),
            num_kv_heads=int(num_kv_heads),
            head_dim=int(head_dim),
            page_size=int(page_size),
            dtype=dtype,
            # contract: keys j > p - sliding_window, i.e. j >= p - (sliding_window - 1)
            window_left=-1 if sliding_window is None else int(sliding_window) - 1,
            logits_soft_cap=0.0 if logit_cap is None else float(logit_cap),
            sm_scale=1.0 / math.sqrt(head_dim) if scale is None else float(scale),
        )

    @property
    def group_size(self) -> int:
        return self.num_qo_heads // self.num_kv_heads

    @property
    def use_tensor_cores(self) -> bool:
        return self.group_size >= TENSOR_CORE_MIN_GROUP

    def _common_plan_kwargs(self) -> dict[str, Any]:
        return {
            "num_qo_heads": self.num_qo_heads,
            "num_kv_heads": self.num_kv_heads,
            "page_size": self.page_size,
            "window_left": self.window_left,
            "logits_soft_cap": self.logits_soft_cap,
            "sm_scale": self.sm_scale,
            "q_data_type": self.dtype,
            "kv_data_type": self.dtype,
        }

    def prefill_plan_kwargs(self) -> dict[str, Any]:
        return {**self._common_plan_kwargs(), "head_dim_qk": self.head_dim, "causal": True}

    def decode_plan_kwargs(self) -> dict[str, Any]:
        return {**self._common_plan_kwargs(), "head_dim": self.head_dim}


def _cpu_int32(values: list[int]) -> Tensor:
    # fresh pageable tensors: FlashInfer's non-blocking copies must not read SequenceInfo's
    # pinned buffer, which the next step overwrites
    return torch.tensor(values, dtype=torch.int32)


@dataclass(frozen=True)
class StepPlanInputs:
    """One step's page table, as ``plan()`` needs it (prefill rows first, then decode rows)."""

    num_prefill: int
    num_prefill_tokens: int
    num_decode: int  # decode rows, CUDA-graph padding rows included
    cu_seqlen: tuple[int, ...]  # host, [rows + 1]
    cu_num_pages: tuple[int, ...]  # host, [rows + 1]
    last_page_len: tuple[int, ...]  # host, [rows]
    cache_loc_device: Tensor  # the step's page ids (device)
    cu_num_pages_device: Tensor  # [rows + 1] (device)
    last_page_len_device: Tensor  # [rows] (device)
    decode_graph_rows: int | None = None  # use the static decode wrapper of this size
    max_pages_per_seq: int = 0  # sizes the static indices buffer

    @property
    def rows(self) -> int:
        return self.num_prefill + self.num_decode

    @property
    def num_prefill_pages(self) -> int:
        return self.cu_num_pages[self.num_prefill]

    @property
    def num_decode_pages(self) -> int:
        return self.cu_num_pages[self.rows] - self.num_prefill_pages

    @functools.cached_property
    def decode_page_counts(self) -> tuple[int, ...]:
        """Pages per decode row: the re-plan key of static decode wrappers."""
        pages = self.cu_num_pages
        return tuple(pages[i + 1] - pages[i] for i in range(self.num_prefill, self.rows))

    # --- plan() arguments (CPU int32 except the page ids, which already are on the device)

    def prefill_plan_args(self) -> dict[str, Tensor]:
        p = self.num_prefill
        return {
            "qo_indptr": _cpu_int32(list(self.cu_seqlen[: p + 1])),
            "paged_kv_indptr": _cpu_int32(list(self.cu_num_pages[: p + 1])),
            "paged_kv_indices": self.cache_loc_device[: self.num_prefill_pages],
            "paged_kv_last_page_len": _cpu_int32(list(self.last_page_len[:p])),
        }

    def decode_plan_args(self) -> dict[str, Tensor]:
        p, first = self.num_prefill, self.num_prefill_pages
        return {
            "indptr": _cpu_int32([n - first for n in self.cu_num_pages[p : self.rows + 1]]),
            "indices": self.decode_page_ids(),
            "last_page_len": _cpu_int32(list(self.last_page_len[p : self.rows])),
        }

    def decode_page_ids(self) -> Tensor:
        first = self.num_prefill_pages
        return self.cache_loc_device[first : first + self.num_decode_pages]


def step_inputs_from_info(info: SequenceInfo, decode_graph_rows: int | None) -> StepPlanInputs:
    """The step ``info`` holds now (read from its host mirrors; no device synchronisation)."""
    num_prefill, num_prefill_tokens, num_decode = info.get_arg("batch_info_host").tolist()
    return StepPlanInputs(
        num_prefill=num_prefill,
        num_prefill_tokens=num_prefill_tokens,
        num_decode=num_decode,
        cu_seqlen=tuple(info.get_arg("cu_seqlen_host").tolist()),
        cu_num_pages=tuple(info.get_arg("cu_num_pages_host").tolist()),
        last_page_len=tuple(info.get_arg("last_page_len_host").tolist()),
        cache_loc_device=info.get_arg("cache_loc"),
        cu_num_pages_device=info.get_arg("cu_num_pages"),
        last_page_len_device=info.get_arg("last_page_len"),
        decode_graph_rows=decode_graph_rows,
        max_pages_per_seq=info.max_pages_per_seq,
    )


def step_inputs_from_tensors(
    batch_info: list[int],
    cu_seqlen: Tensor,
    cu_num_pages: Tensor,
    cache_loc: Tensor,
    last_page_len: Tensor,
) -> StepPlanInputs:
    """The step described by the op's own metadata tensors (device-to-host copies: slow path)."""
    num_prefill, num_prefill_tokens, num_decode = batch_info
    rows = num_prefill + num_decode
    return StepPlanInputs(
        num_prefill=num_prefill,
        num_prefill_tokens=num_prefill_tokens,
        num_decode=num_decode,
        cu_seqlen=tuple(cu_seqlen[: rows + 1].tolist()),
        cu_num_pages=tuple(cu_num_pages[: rows + 1].tolist()),
        last_page_len=tuple(last_page_len[:rows].tolist()),
        cache_loc_device=cache_loc,
        cu_num_pages_device=cu_num_pages,
        last_page_len_device=last_page_len,
    )
