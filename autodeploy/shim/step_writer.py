"""Filling a step of ``SequenceInfo`` (a mixin; the API is documented in sequence_info.py).

``nest_sequences`` validates a batch (``batch_rules.py``) before anything is written, then
``_write`` fills the host buffer through numpy views (no Python loop per token or per page),
lets added regions fill themselves, makes the one host-to-device copy and runs the host hooks.
The example batches (``set_example_sequence``, ``set_max_num_tokens_sample``,
``set_generate_only_batch``) only touch the scratch page and the spare slot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate, chain

import numpy as np
import torch

from ..utils.errors import ConfigError
from .batch_rules import count_prefill_if_valid, raise_first_violation
from .regions import BatchStep


class StepWriter:
    """The step-filling half of ``SequenceInfo`` (its state lives on ``SequenceInfo``)."""

    def nest_sequences(
        self,
        input_ids: Sequence[Sequence[int]],
        input_pos: Sequence[int],
        cache_loc: Sequence[Sequence[int]],
        slot_idx: Sequence[int] | None = None,
    ) -> None:
        """Lay out one step (see the module docstring); validates before writing anything."""
        seq_lens = list(map(len, input_ids))
        pos = list(map(int, input_pos))
        page_counts = list(map(len, cache_loc))
        slots = list(range(len(seq_lens))) if slot_idx is None else list(map(int, slot_idx))
        # Converted before anything is written (a bad value raises here, not half-way).
        ids = np.array(list(chain.from_iterable(input_ids)), dtype=np.int64)
        pages = np.array(list(chain.from_iterable(cache_loc)), dtype=np.int64)
        num_prefill = count_prefill_if_valid(self, seq_lens, pos, page_counts, pages, slots)
        if num_prefill is None:  # a rule is broken: the sequence-by-sequence check names it
            raise_first_violation(
                self,
                [list(map(int, seq)) for seq in input_ids],
                pos,
                [list(map(int, seq_pages)) for seq_pages in cache_loc],
                slots,
            )
            raise AssertionError("batch_rules: the two checks disagree")  # a bug, not bad input
        num_real = len(seq_lens)
        num_padding = self._padding_for(num_real) if num_prefill == 0 else 0
        if num_padding:  # one token (id 0) at position 0 of the scratch page, the spare slot
            seq_lens += [1] * num_padding
            pos += [0] * num_padding
            page_counts += [1] * num_padding
            slots += [self.spare_slot] * num_padding
            ids = np.concatenate((ids, np.zeros(num_padding, dtype=np.int64)))
            scratch = np.full(num_padding, self.SCRATCH_PAGE, dtype=np.int64)
            pages = np.concatenate((pages, scratch))
        self._write(seq_lens, pos, page_counts, pages, ids, slots, num_real, num_prefill)

    def set_example_sequence(self, batch_size: int = 2, seq_len: int = 4) -> None:
        """A prefill batch of ``batch_size`` dummy sequences that write only the scratch page."""
        batch_size = min(batch_size, self._row_capacity)
        seq_len = max(1, min(seq_len, self.max_seq_len, self._token_capacity // batch_size))
        self._nest_on_scratch([seq_len] * batch_size)

    def set_max_num_tokens_sample(self) -> None:
        """A prefill batch of max_num_tokens tokens on the scratch page (memory measurement)."""
        lengths, left = [], self.max_num_tokens
        while left > 0 and len(lengths) < self.max_batch_size:
            lengths.append(min(left, self.max_seq_len))
            left -= lengths[-1]
        self._nest_on_scratch(lengths)

    def set_generate_only_batch(self, batch_size: int) -> None:
        """A decode-only batch of ``batch_size`` padding rows (CUDA-graph capture)."""
        if not 1 <= batch_size <= min(self.max_batch_size, self.max_num_tokens):
            raise ConfigError(
                f"set_generate_only_batch: batch_size must be in 1..{self.max_batch_size}, "
                f"got {batch_size}."
            )
        ones, zeros = [1] * batch_size, [0] * batch_size
        self._write(
            ones, zeros, ones, [self.SCRATCH_PAGE] * batch_size, zeros,
            [self.spare_slot] * batch_size, num_real=0, num_prefill=0,
        )  # fmt: skip

    def example_inputs(self, batch_size: int = 2, seq_len: int = 4) -> dict[str, torch.Tensor]:
        """``input_ids``/``position_ids`` as [b, s] host tensors for ``torch.export``."""
        input_ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
        position_ids = torch.arange(seq_len, dtype=torch.long).repeat(batch_size, 1)
        return {"input_ids": input_ids, "position_ids": position_ids}

    def _nest_on_scratch(self, lengths: list[int]) -> None:
        page_counts = [math.ceil(n / self.page_size) for n in lengths]
        self._write(
            list(lengths), [0] * len(lengths), page_counts, [self.SCRATCH_PAGE] * sum(page_counts),
            [0] * sum(lengths), list(range(len(lengths))), num_real=len(lengths),
            num_prefill=len(lengths),
        )  # fmt: skip

    def _padding_for(self, num_rows: int) -> int:
        """Padding rows for a decode-only batch of ``num_rows`` rows (0: none)."""
        for size in self._padded_sizes:
            if size >= num_rows:
                return size - num_rows
        return 0

    def _write(
        self,
        seq_lens: list[int],
        pos: list[int],
        page_counts: list[int],
        pages: np.ndarray | list[int],
        ids: np.ndarray | list[int],
        slots: list[int],
        num_real: int,
        num_prefill: int,
    ) -> None:
        """Fill the host buffer with a checked batch (padding rows included), copy, run hooks."""
        self._buffer.wait_for_copy()  # the previous copy must have read the host buffer
        rows, tokens, num_pages = len(seq_lens), len(ids), len(pages)
        num_prefill_tokens = sum(seq_lens[:num_prefill])
        decode_only = num_prefill == 0
        a = self._host_np

        start = a["input_pos"][:rows]
        start[:] = pos
        if decode_only:  # one token per row: positions = input_pos
            if not self._decode_constants:
                self._write_decode_constants()
            a["position_ids"][:rows] = start
        else:
            self._decode_constants = False
            lens = a["seq_len"][:rows]
            lens[:] = seq_lens
            cu_seqlen = a["cu_seqlen"][: rows + 1]
            cu_seqlen[:] = list(accumulate(seq_lens, initial=0))
            np.subtract(cu_seqlen[1 : num_real + 1], 1, out=a["last_token_idx"][:num_real])
            # token t of row i sits at position input_pos[i] + (t - cu_seqlen[i])
            positions = a["position_ids"][:tokens]
            positions[:] = self._arange[:tokens]
            positions += np.repeat(start - cu_seqlen[:rows], lens)
        ends = a["seq_len_with_cache"][:rows]
        np.add(start, a["seq_len"][:rows], out=ends)
        last_page_len = a["last_page_len"][:rows]  # (end - 1) % page_size + 1
        np.subtract(ends, 1, out=last_page_len)
        np.remainder(last_page_len, self.page_size, out=last_page_len)
        np.add(last_page_len, 1, out=last_page_len)
        a["cu_num_pages"][: rows + 1] = list(accumulate(page_counts, initial=0))
        a["slot_idx"][:rows] = slots
        a["cache_loc"][:num_pages] = pages
        a["input_ids"][:tokens] = ids
        a["batch_info"][:] = (num_prefill, num_prefill_tokens, rows - num_prefill)

        self._rows, self._num_real = rows, num_real
        self._tokens_padded, self._tokens_real = tokens, tokens - (rows - num_real)
        self._pages_used = num_pages
        self._num_prefill = num_prefill
        self._num_prefill_tokens = num_prefill_tokens
        self._decode_only = decode_only
        self._seq_lens, self._input_pos = seq_lens, pos
        if self._fills:
            self._fill_added_regions()
        self._copy_to_device()
        self._build_named_args()
        for hook in self._hooks:
            hook(self)

    def _write_decode_constants(self) -> None:
        """What every decode-only batch has, for all rows: 1 new token per row, so token offsets
        and last-token indices are the row index. Kept until a batch with prefill overwrites
        them (``_decode_constants``), so decode steps do not rewrite them."""
        a, rows = self._host_np, self._row_capacity
        a["seq_len"][:] = 1
        a["cu_seqlen"][:] = self._arange[: rows + 1]
        a["last_token_idx"][:] = self._arange[:rows]
        self._decode_constants = True

    def _fill_added_regions(self) -> None:
        """Let each added region write its values for the step (before the one copy)."""
        a, rows, tokens, pages = self._host_np, self._rows, self._tokens_padded, self._pages_used
        step = BatchStep(
            rows=rows,
            num_real=self._num_real,
            num_prefill=self._num_prefill,
            num_tokens=tokens,
            num_pages=pages,
            seq_len=a["seq_len"][:rows],
            input_pos=a["input_pos"][:rows],
            cu_seqlen=a["cu_seqlen"][: rows + 1],
            slot_idx=a["slot_idx"][:rows],
            cu_num_pages=a["cu_num_pages"][: rows + 1],
            cache_loc=a["cache_loc"][:pages],
            position_ids=a["position_ids"][:tokens],
        )
        for region in self._fills:
            region.fill(step, a[region.name][: region.length(rows, tokens, pages)])

    def _copy_to_device(self) -> None:
        if self._buffer.device_buf is self._buffer.host_buf:
            return  # CPU: one buffer, nothing to copy
        end = self._buffer.end_of("input_ids", self._tokens_padded)
        self._buffer.copy_to_device(self._slice("host_buf", end), self._slice("device_buf", end))
