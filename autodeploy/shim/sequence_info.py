"""SequenceInfo: the packed ("flattened") batch one model step runs on.

The layout is fixed by ``.notes/CACHED_ATTENTION_CONTRACT.md``; the buffer and its regions
live in ``batch_buffer.py`` and ``regions.py``, the batch rules in ``batch_rules.py``. In short,
a step has B sequences, prefill sequences first, and sequence ``i`` brings ``seq_len[i]`` new
tokens at positions ``input_pos[i] .. input_pos[i] + seq_len[i] - 1``. "Decode" = 1 new token
and ``input_pos > 0``; everything else (chunked-prefill continuations included) is prefill.

Public API (stable; the runtime codes against it)
-------------------------------------------------
``SequenceInfo(max_seq_len, max_batch_size, max_num_tokens=None, page_size=32, device="cpu")``

Limits and constants (read-only attributes): ``max_seq_len``, ``max_batch_size``,
``max_num_tokens`` (None -> ``max(max_seq_len, max_batch_size)``), ``page_size``, ``device``,
``max_pages_per_seq`` (= ceil(max_seq_len / page_size)), ``num_state_slots``
(= max_batch_size + 1), ``spare_slot`` (= max_batch_size, used by padding rows),
``SCRATCH_PAGE`` (= 0, never given to a real sequence), ``num_pages`` (pool size, set by
``CachedSequenceInterface`` through ``set_num_pages``; None until then).

Filling a step:
  ``nest_sequences(input_ids, input_pos, cache_loc, slot_idx=None)``
      ``input_ids[i]``: the new tokens of sequence i; ``input_pos[i]``: tokens it already has in
      the cache; ``cache_loc[i]``: its page ids in order (at least enough pages for
      ``input_pos[i] + len(input_ids[i])`` tokens); ``slot_idx[i]``: its state slot (default i).
      Everything is validated before anything is written (an error leaves the previous batch
      intact). Then ONE non-blocking host-to-device copy, then the host prepare hooks.
  ``set_example_sequence(batch_size=2, seq_len=4)``: a prefill batch of dummy tokens that only
      touches the scratch page (for warm-ups and shape checks).
  ``set_max_num_tokens_sample()``: a prefill batch of ``max_num_tokens`` tokens on the scratch
      page (memory measurement before sizing the cache).
  ``set_generate_only_batch(batch_size)``: a decode-only batch of padding rows (CUDA-graph
      capture).
  ``example_inputs(batch_size=2, seq_len=4)``: ``{input_ids, position_ids}`` as [b, s] host
      tensors for ``torch.export`` (b >= 2 so export keeps the batch dim dynamic).

Reading a step:
  ``named_args``: dict of the model inputs: ``input_ids`` and ``position_ids`` ([1, total_tokens]
      when the batch has prefill, [B, 1] when decode-only, int64) and every activated metadata
      arg (one per region, ``regions.py``; built-in names in ``ARG_NAMES``). ``<name>_host``
      args are CPU mirrors.
  ``activate_arg(name) -> bool``: make ``name`` part of ``named_args`` (True if it was new);
      ``active_args``; ``get_arg(name)``: the current tensor of any arg, active or not.
  ``add_region(Region(...))``: a new named metadata region (an op family's or a plugin's),
      filled each step by its ``fill`` function inside the same host buffer and copy;
      ``regions``: every region by name.
  ``num_sequences`` (real sequences), ``num_tokens`` (real tokens), ``num_prefill``,
      ``num_prefill_tokens``, ``num_decode``, ``is_decode_only``, ``batch_size`` (rows the model
      sees, padding included), ``seq_lens`` / ``input_positions`` (host lists of the real rows).
  ``gather_last_logits(logits) -> [num_sequences, vocab]``: the logits of each real sequence's
      last token (padding rows dropped; a view of ``logits`` for decode-only batches).

Hooks and padding:
  ``register_host_prepare_hook(fn)``: ``fn(info)`` runs on the host after every step's copy, outside
      any CUDA graph (e.g. FlashInfer ``plan()``). Registering the same function twice is a no-op.
  ``set_padded_batch_sizes(sizes)``: opt-in CUDA-graph padding. A decode-only batch of B rows is
      padded to the smallest size >= B in ``sizes`` with padding rows (token 0 at position 0 of the
      scratch page, state slot ``spare_slot``; counted as decode rows). ``gather_last_logits``
      drops them. ``None`` / ``[]`` turns padding off.
  ``to(device)``: move the device buffer (and pin the host buffer when the device is CUDA).

Per-step cost (``python -m autodeploy.tools.host_overhead`` measures it)
---------------------------------------------------------------------------
``nest_sequences`` does no Python loop per token or per page: the rules are checked with a few
builtin/numpy reductions (``batch_rules.py``; the sequence-by-sequence check runs only to name
the error of a bad batch), the fields are written through numpy views of the host buffer, and
positions come from ``np.repeat``. Decode-only steps skip what every decode batch shares
(``seq_len`` = 1, token offsets = row index), which stays in the host buffer until a batch with
prefill overwrites it. The views in ``named_args`` are cached per batch shape (a view of a given
shape starts at the same address every step, which CUDA graphs rely on). What remains grows with
the batch: converting the page ids (O(total pages)) and a few O(rows) builtins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..utils.errors import ConfigError
from ..utils.suggest import did_you_mean
from .batch_buffer import BatchBuffer
from .regions import ARG_NAMES, MODEL_INPUTS, Region, capacity_for, ordered_regions
from .step_writer import StepWriter

__all__ = ["ARG_NAMES", "MODEL_INPUTS", "Region", "SequenceInfo"]

HostPrepareHook = Callable[["SequenceInfo"], None]

_VIEW_CACHE_SIZE = 1024  # cached views (and named_args dicts); a full cache is emptied


class SequenceInfo(StepWriter):
    """The packed batch of one step; see the module docstring for the API."""

    SCRATCH_PAGE = 0

    def __init__(
        self,
        max_seq_len: int,
        max_batch_size: int,
        max_num_tokens: int | None = None,
        page_size: int = 32,
        device: str | torch.device = "cpu",
    ):
        for name, value in (
            ("max_seq_len", max_seq_len),
            ("max_batch_size", max_batch_size),
            ("page_size", page_size),
        ):
            if int(value) < 1:
                raise ConfigError(f"SequenceInfo: {name} must be >= 1, got {value}.")
        self.max_seq_len = int(max_seq_len)
        self.max_batch_size = int(max_batch_size)
        self.max_num_tokens = int(max_num_tokens or max(max_seq_len, max_batch_size))
        if self.max_num_tokens < 1:
            raise ConfigError(f"SequenceInfo: max_num_tokens must be >= 1, got {max_num_tokens}.")
        self.page_size = int(page_size)
        self.max_pages_per_seq = math.ceil(self.max_seq_len / self.page_size)
        self.num_state_slots = self.max_batch_size + 1
        self.spare_slot = self.max_batch_size
        self.num_pages: int | None = None

        self._capacity = capacity_for(
            self.max_batch_size, self.max_num_tokens, self.max_seq_len, self.page_size
        )
        self._row_capacity, self._token_capacity = self._capacity.rows, self._capacity.tokens
        self._arange = np.arange(max(self._token_capacity, self._row_capacity + 1))
        self._added: list[Region] = []
        self._active: list[str] = []
        self._hooks: list[HostPrepareHook] = []
        self._padded_sizes: list[int] = []
        self._device = torch.device(device)
        self._allocate()
        self.set_example_sequence()

    # ------------------------------------------------------------------ buffers and regions

    def _allocate(self) -> None:
        self._buffer = BatchBuffer(ordered_regions(self._added), self._capacity, self._device)
        self._regions = self._buffer.regions
        self._host, self._dev, self._host_np = (
            self._buffer.host,
            self._buffer.dev,
            self._buffer.host_np,
        )
        self._page_sized = tuple(
            name + suffix
            for name, region in self._regions.items()
            if region.per == "page"
            for suffix in ("", "_host")
        )
        self._fills = [r for r in self._added if r.fill is not None]
        self._decode_constants = False  # see _write_decode_constants
        self._forget_views()

    def add_region(self, region: Region) -> None:
        """Add a metadata region (an op family's or a plugin's; see ``regions.py``). The buffers
        are laid out again and the current batch becomes the example batch. Adding the same
        region twice is a no-op; another region under a taken name is an error."""
        known = self._regions.get(region.name)
        if known is not None:
            if known == region:
                return
            raise ConfigError(
                f"SequenceInfo already has a region {region.name!r} ({known}); pick another name."
            )
        self._added.append(region)
        self._allocate()
        self.set_example_sequence()

    @property
    def regions(self) -> dict[str, Region]:
        """Every region by name (built-in and added), in buffer order."""
        return dict(self._regions)

    def _forget_views(self) -> None:
        """Drop the cached slices (after the buffers or the active args changed)."""
        # (rows, tokens, decode_only) -> named_args without the page-count-sized args
        self._named_cache: dict[tuple[int, int, bool], dict[str, torch.Tensor]] = {}
        # (name, length) -> slice of a region or of the whole buffers (see _slice)
        self._slices: dict[tuple[str, int], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> SequenceInfo:
        """Move the device buffer to ``device`` (keeps the current batch)."""
        device = torch.device(device)
        if device == self._device:
            return self
        host = self._buffer.host_buf.clone()
        self._device = device
        self._allocate()
        self._buffer.host_buf.copy_(host)
        self._copy_to_device()
        self._build_named_args()
        return self

    # ------------------------------------------------------------------ configuration

    def set_num_pages(self, num_pages: int) -> None:
        """Record the size of the paged pool (page ids must be < num_pages)."""
        if num_pages < 2:
            raise ConfigError(
                f"The KV cache pool needs at least 2 pages (1 scratch + 1 usable), got {num_pages}."
            )
        self.num_pages = int(num_pages)

    def set_padded_batch_sizes(self, sizes: Sequence[int] | None) -> None:
        """Pad decode-only batches up to the nearest of ``sizes`` (opt-in; None turns it off)."""
        sizes = sorted(set(int(s) for s in (sizes or [])))
        limit = min(self.max_batch_size, self.max_num_tokens)
        bad = [s for s in sizes if not 1 <= s <= limit]
        if bad:
            raise ConfigError(
                f"Padded batch sizes {bad} are outside 1..{limit} (max_batch_size / "
                "max_num_tokens). Drop them or raise the limits."
            )
        self._padded_sizes = sizes

    @property
    def padded_batch_sizes(self) -> list[int]:
        return list(self._padded_sizes)

    def register_host_prepare_hook(self, fn: HostPrepareHook) -> None:
        """Run ``fn(info)`` on the host after each step's copy (outside CUDA graphs)."""
        if fn not in self._hooks:
            self._hooks.append(fn)

    # ------------------------------------------------------------------ args

    def _check_name(self, name: str) -> None:
        base = name.removesuffix("_host")
        region = self._regions.get(base)
        if region is None or region.internal:
            known = [n for n, r in self._regions.items() if not r.internal]
            known += [f"{n}_host" for n in known]
            raise ConfigError(
                f"SequenceInfo has no argument {name!r}.{did_you_mean(name, known)} Known: "
                f"{', '.join(known)}. An op family adds its own with add_region(Region(...))."
            )

    def activate_arg(self, name: str) -> bool:
        """Make ``name`` a model input (in ``named_args``); True if it was not active yet."""
        self._check_name(name)
        if name in MODEL_INPUTS or name in self._active:
            return False
        self._active.append(name)
        self._forget_views()
        self._build_named_args()
        return True

    @property
    def active_args(self) -> tuple[str, ...]:
        return MODEL_INPUTS + tuple(self._active)

    def get_arg(self, name: str) -> torch.Tensor:
        """The current value of any argument (the same tensor ``named_args`` would hold)."""
        view = self._named_args.get(name)
        if view is not None:
            return view
        self._check_name(name)
        return self._arg_view(name)

    def _arg_view(self, name: str) -> torch.Tensor:
        host = name.endswith("_host")
        base = name.removesuffix("_host")
        region = self._regions[base]
        if region.per == "page":
            return self._slice(name, region.length(0, 0, self._pages_used))
        views = self._host if host else self._dev
        rows, tokens = self._rows, self._tokens_padded
        if base in MODEL_INPUTS:
            flat = views[base][:tokens]
            return flat.view(rows, 1) if self._decode_only else flat.view(1, tokens)
        return views[base][: region.length(rows, tokens, self._pages_used)]

    def _slice(self, name: str, length: int) -> torch.Tensor:
        """``name``'s first ``length`` elements (cached; the cache is bounded).

        ``name``: a region (``cache_loc``, ``last_token_idx``; ``_host`` suffix = host mirror) or
        ``host_buf`` / ``device_buf`` (the whole buffers, in bytes, for the step's copy)."""
        key = (name, length)
        view = self._slices.get(key)
        if view is None:
            if len(self._slices) >= _VIEW_CACHE_SIZE:
                self._slices.clear()
            if name == "host_buf" or name == "device_buf":
                buffer = self._buffer
                base = buffer.host_buf if name == "host_buf" else buffer.device_buf
            elif name.endswith("_host"):
                base = self._host[name[: -len("_host")]]
            else:
                base = self._dev[name]
            view = self._slices[key] = base[:length]
        return view

    @property
    def named_args(self) -> dict[str, torch.Tensor]:
        """Model inputs of the current step: input_ids, position_ids and the active args."""
        return dict(self._named_args)

    def _build_named_args(self) -> None:
        # Every view but cache_loc depends only on (rows, tokens, decode_only): reuse the dict
        # made for the same shape (a step then costs a dict lookup, not one slice per arg).
        key = (self._rows, self._tokens_padded, self._decode_only)
        args = self._named_cache.get(key)
        if args is None:
            if len(self._named_cache) >= _VIEW_CACHE_SIZE:
                self._named_cache.clear()
            args = {name: self._arg_view(name) for name in self.active_args}
            self._named_cache[key] = args
        for name in self._page_sized:
            if name in args:  # length = this step's page count; never handed out (copied)
                args[name] = self._arg_view(name)
        self._named_args = args

    # ------------------------------------------------------------------ batch queries

    @property
    def num_sequences(self) -> int:
        """Real sequences in the batch (padding rows excluded)."""
        return self._num_real

    @property
    def batch_size(self) -> int:
        """Rows the model sees (padding rows included)."""
        return self._rows

    @property
    def num_tokens(self) -> int:
        """Real new tokens in the batch (padding excluded)."""
        return self._tokens_real

    @property
    def num_prefill(self) -> int:
        return self._num_prefill

    @property
    def num_prefill_tokens(self) -> int:
        return self._num_prefill_tokens

    @property
    def num_decode(self) -> int:
        """Decode rows of real sequences (padding rows excluded)."""
        return self._num_real - self._num_prefill

    @property
    def is_decode_only(self) -> bool:
        return self._decode_only

    @property
    def seq_lens(self) -> list[int]:
        return list(self._seq_lens[: self._num_real])

    @property
    def input_positions(self) -> list[int]:
        return list(self._input_pos[: self._num_real])

    def gather_last_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits of a step -> [num_sequences, V], padding dropped.

        Accepts one row per token ([1, T, V], [B, 1, V] or [T, V]) or one row per sequence
        ([1, B, V], as ``gather_logits_before_lm_head`` makes them). One row per sequence gives a
        view of ``logits`` (valid until the next forward under CUDA graphs); per-token logits of
        a batch with prefill give a new tensor."""
        flat = logits.reshape(-1, logits.shape[-1])
        if flat.shape[0] == self._rows:
            # One row per sequence: a decode batch, or logits already gathered before the LM head
            # (gather_logits_before_lm_head). Padding rows come last.
            return flat if self._num_real == self._rows else flat[: self._num_real]
        if flat.shape[0] != self._tokens_padded:
            raise ValueError(
                f"gather_last_logits: logits have {flat.shape[0]} token rows but the batch has "
                f"{self._tokens_padded} tokens; pass the logits of this step's forward."
            )
        index = self._slice("last_token_idx", self._num_real)
        if index.device != flat.device:
            index = index.to(flat.device)
        return flat.index_select(0, index)
