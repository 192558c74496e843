"""Host-side planning for the FlashInfer attention backend (no FlashInfer import here).

FlashInfer splits attention into ``plan()`` (host: turns the batch's page table into a work
partition, copies the page table to the GPU) and ``run()`` (device: the kernel). ``plan()`` cannot
run inside a CUDA graph, and one plan serves every layer with the same attention parameters. So:

- ``LayerPlanConfig`` and ``StepPlanInputs`` (``flashinfer_plan_inputs.py``): what ``plan()``
  fixes besides the batch (heads, head_dim, page size, dtype, window, soft-cap, scale; layers
  that share one share a set of wrappers and one plan per step: a Llama has one, a Gemma-2 two),
  and the step's page table split into prefill and decode rows.
- ``FlashInferPlanner`` (one per ``SequenceInfo``, so per model): ``prepare_step(info)`` is the
  host prepare hook's work (after the step's H2D copy, outside CUDA graphs): it plans every config
  the model has run. The cached op calls ``wrappers_for`` to get its config's planned wrappers; a
  config seen for the first time is planned there (only outside a CUDA-graph capture).

Which decode wrapper a step uses
--------------------------------
A decode-only step of ``rows`` rows uses the *static* decode wrapper of that size (FlashInfer's
``use_cuda_graph=True`` mode, bound to buffers we own: indptr ``[rows + 1]``, indices
``[rows * max_pages_per_seq]``, last_page_len ``[rows]``) when ``rows`` is one of
``info.padded_batch_sizes``, when the step is a capture batch (``set_generate_only_batch``: no
real sequence), or when a static wrapper of that size already exists (so whatever was captured
is what gets planned at replay). Every other decode (mixed batches, sizes never captured) uses
the per-config eager decode wrapper. Prefill always uses the eager prefill wrapper and is never
captured.

Re-plan policy
--------------
FlashInfer's fa2 plan (``DecodePlan`` / ``PrefillPlan`` in its scheduler) reads on the host only
the page *counts* per row (indptr), the query indptr and the fixed parameters; the kernels read
the page ids and last-page lengths from device buffers at run time. Hence:

- static decode wrappers keep the key ``decode_page_counts`` (pages per row) of their last plan.
  Same key: no ``plan()``; the step's indptr, page ids and last-page lengths are copied into the
  static buffers (three device-to-device copies from ``SequenceInfo``'s device buffer). New key
  (a sequence crossed a page boundary, or the batch changed): full ``plan()``. With page size P a
  sequence re-plans once every P decode steps.
- eager wrappers (prefill, non-captured decode) are planned once per step per config, when the
  step has that phase: their device buffers are made by ``plan()`` itself.

A call with metadata the hook did not plan (no hook registered, or a ``SequenceInfo`` that was
moved or interleaved with another) is planned on the spot from the op's own tensors (a
device-to-host copy), counted in ``stats["unplanned_calls"]`` and logged at debug level; inside a
CUDA-graph capture it is an error instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor

from ...utils.logger import logger
from .flashinfer_plan_inputs import (  # noqa: F401  (PlanningError etc. re-exported)
    TENSOR_CORE_MIN_GROUP,
    LayerPlanConfig,
    PlanningError,
    StepPlanInputs,
    step_inputs_from_info,
    step_inputs_from_tensors,
)

if TYPE_CHECKING:
    from ...shim.sequence_info import SequenceInfo


# ----------------------------------------------------------------------------------------------
# wrappers
# ----------------------------------------------------------------------------------------------
class WrapperFactory(Protocol):
    """Makes FlashInfer wrappers and appends to the cache (``flashinfer_kernels.
    FlashInferKernels``; tests use a torch implementation of the same semantics)."""

    def prefill(self) -> Any: ...

    def decode(self, use_tensor_cores: bool) -> Any: ...

    def static_decode(
        self, batch_size: int, max_pages: int, use_tensor_cores: bool
    ) -> StaticDecodeWrapper: ...

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
    ) -> None: ...


@dataclass
class StaticDecodeWrapper:
    """A ``use_cuda_graph=True`` decode wrapper and the buffers it reads (which we own)."""

    wrapper: Any
    indptr: Tensor  # [batch_size + 1]
    indices: Tensor  # [max_pages]
    last_page_len: Tensor  # [batch_size]
    planned_page_counts: tuple[int, ...] | None = None


@dataclass
class PlannedWrappers:
    """What one config's layers run this step (None: the step has no such rows)."""

    prefill: Any = None
    decode: Any = None
    decode_is_static: bool = False


@dataclass
class _LayerWrappers:
    prefill: Any = None
    decode: Any = None
    static_decode: dict[int, StaticDecodeWrapper] = field(default_factory=dict)
    planned_step: int = -1
    active: PlannedWrappers = field(default_factory=PlannedWrappers)


class FlashInferPlanner:
    """Plans FlashInfer wrappers once per step per ``LayerPlanConfig`` (see module docstring)."""

    def __init__(self, factory: WrapperFactory):
        self.factory = factory
        self.stats: Counter[str] = Counter()
        self._layers: dict[LayerPlanConfig, _LayerWrappers] = {}
        self._configs: dict[tuple, LayerPlanConfig] = {}
        self._graph_rows: set[int] = set()
        self._step: StepPlanInputs | None = None
        self._step_id = 0
        self._step_identity: tuple[int, tuple[int, ...]] | None = None

    # ------------------------------------------------------------------ the host hook

    def prepare_step(self, info: SequenceInfo) -> None:
        """Record ``info``'s step and plan every known config for it."""
        rows = info.batch_size
        graph_rows = None
        if info.is_decode_only and (
            rows in self._graph_rows or rows in info.padded_batch_sizes or info.num_sequences == 0
        ):
            graph_rows = rows
            self._graph_rows.add(rows)
        step = step_inputs_from_info(info, graph_rows)
        batch_info_host = info.get_arg("batch_info_host")
        self._step = step
        self._step_id += 1
        self._step_identity = (
            batch_info_host.data_ptr(),
            (step.num_prefill, step.num_prefill_tokens, step.num_decode),
        )
        self.stats["steps"] += 1
        for config, layer in self._layers.items():
            self._plan(config, layer, step)
            layer.planned_step = self._step_id

    # ------------------------------------------------------------------ the op's side

    def config_for(
        self,
        q: Tensor,
        kv_cache: Tensor,
        scale: float | None,
        sliding_window: int | None,
        logit_cap: float | None,
    ) -> LayerPlanConfig:
        """The (cached) ``LayerPlanConfig`` of a call: q [T, heads, d], kv_cache HND."""
        key = (q.shape[-2], q.shape[-1], kv_cache.shape[2], kv_cache.shape[3], q.dtype, scale,
               sliding_window, logit_cap)  # fmt: skip
        config = self._configs.get(key)
        if config is None:
            config = LayerPlanConfig.from_call(*key)
            self._configs[key] = config
        return config

    def wrappers_for(
        self,
        config: LayerPlanConfig,
        batch_info_host: Tensor,
        cu_seqlen: Tensor,
        cu_num_pages: Tensor,
        cache_loc: Tensor,
        last_page_len: Tensor,
        capturing: bool = False,
    ) -> PlannedWrappers:
        """The planned wrappers of ``config`` for the batch the op's metadata describes."""
        batch_info = [int(x) for x in batch_info_host.tolist()]
        identity = (batch_info_host.data_ptr(), tuple(batch_info))
        if self._step is not None and identity == self._step_identity:
            layer = self._layers.get(config)
            if layer is None:
                layer = self._layers[config] = _LayerWrappers()
            if layer.planned_step != self._step_id:
                if capturing:
                    raise PlanningError(
                        "flashinfer attention: a layer kind first seen inside a CUDA-graph "
                        "capture cannot be planned there. Run one uncaptured forward of the "
                        "batch (a warm-up) before capturing."
                    )
                self._plan(config, layer, self._step)
                layer.planned_step = self._step_id
            planned = layer.active
        else:
            if capturing:
                raise PlanningError(
                    "flashinfer attention: the batch being captured was not planned by the host "
                    "hook. Fill the batch through SequenceInfo (nest_sequences or "
                    "set_generate_only_batch) after insert_cached_attention registered the "
                    "FlashInfer hook, then capture."
                )
            self.stats["unplanned_calls"] += 1
            logger.debug(
                "flashinfer attention: batch %s not planned by the host hook; planning "
                "from the op's metadata (device-to-host copy)",
                batch_info,
            )
            step = step_inputs_from_tensors(
                batch_info, cu_seqlen, cu_num_pages, cache_loc, last_page_len
            )
            layer = self._layers.setdefault(config, _LayerWrappers())
            self._plan(config, layer, step)
            layer.planned_step = -1  # the hook's step (if any) must be planned again
            planned = layer.active
        if capturing and (planned.prefill is not None or not planned.decode_is_static):
            raise PlanningError(
                "flashinfer attention: only decode-only batches on a static decode wrapper can "
                "be captured in a CUDA graph. Call info.set_padded_batch_sizes(sizes) (or use "
                "info.set_generate_only_batch(batch_size)) before filling the batch to capture."
            )
        return planned

    def static_wrappers(self) -> list[StaticDecodeWrapper]:
        """Every static (CUDA-graph) decode wrapper made so far."""
        return [w for layer in self._layers.values() for w in layer.static_decode.values()]

    # ------------------------------------------------------------------ planning

    def _plan(self, config: LayerPlanConfig, layer: _LayerWrappers, step: StepPlanInputs) -> None:
        planned = PlannedWrappers()
        if step.num_prefill:
            if layer.prefill is None:
                layer.prefill = self.factory.prefill()
            layer.prefill.plan(**step.prefill_plan_args(), **config.prefill_plan_kwargs())
            planned.prefill = layer.prefill
            self.stats["prefill_plans"] += 1
        if step.num_decode:
            if step.decode_graph_rows is not None:
                planned.decode = self._plan_static_decode(config, layer, step)
                planned.decode_is_static = True
            else:
                if layer.decode is None:
                    layer.decode = self.factory.decode(config.use_tensor_cores)
                layer.decode.plan(**step.decode_plan_args(), **config.decode_plan_kwargs())
                planned.decode = layer.decode
                self.stats["decode_plans"] += 1
        layer.active = planned

    def _plan_static_decode(
        self, config: LayerPlanConfig, layer: _LayerWrappers, step: StepPlanInputs
    ) -> Any:
        rows = step.num_decode
        static = layer.static_decode.get(rows)
        if static is None:
            static = self.factory.static_decode(
                rows, rows * max(step.max_pages_per_seq, 1), config.use_tensor_cores
            )
            layer.static_decode[rows] = static
        if static.planned_page_counts == step.decode_page_counts:
            # same work partition: only the page table's contents changed (see module docstring);
            # static wrappers serve decode-only steps, so the decode rows are all the rows
            static.indptr.copy_(step.cu_num_pages_device[: rows + 1], non_blocking=True)
            static.indices[: step.num_decode_pages].copy_(step.decode_page_ids(), non_blocking=True)
            static.last_page_len.copy_(step.last_page_len_device[:rows], non_blocking=True)
            self.stats["decode_refreshes"] += 1
        else:
            static.planned_page_counts = None  # a failing plan() must not leave a stale key
            static.wrapper.plan(**step.decode_plan_args(), **config.decode_plan_kwargs())
            static.planned_page_counts = step.decode_page_counts
            self.stats["decode_plans"] += 1
        return static.wrapper
