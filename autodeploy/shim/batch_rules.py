"""The rules a packed batch must follow, checked two ways (``SequenceInfo.nest_sequences``).

A batch is B sequences; sequence ``i`` brings ``seq_lens[i]`` new tokens at ``input_pos[i]``,
owns ``page_counts[i]`` pages (ids concatenated in ``pages``) and state slot ``slots[i]``.
It is valid when:

- every list has one entry per sequence, 1 <= B <= max_batch_size, the new tokens together are
  at most max_num_tokens;
- every sequence has >= 1 new token, ``input_pos >= 0``, ends at most at ``max_seq_len``, has
  enough pages for its end (``ceil(end / page_size)``) and at most ``max_pages_per_seq``;
- every page id is in ``1 .. num_pages - 1`` (page 0 is the scratch page); every slot is in
  ``0 .. max_batch_size - 1``;
- prefill sequences come first ("decode" = 1 new token at ``input_pos > 0``).

``count_prefill_if_valid`` is the per-step check: a handful of builtin ``min``/``max``/``all``
calls over the rows and a numpy ``min``/``max`` over the page ids, no Python loop per page. It
returns the number of prefill sequences when the batch is valid, None otherwise; only then does
``raise_first_violation`` walk the sequences one by one to raise the error naming the first
bad one. Both encode the same rules (``tests/shim/test_batch_rules.py`` compares them on random
batches).
"""

from __future__ import annotations

import math
from itertools import repeat
from operator import add, le, mul
from typing import TYPE_CHECKING

import numpy as np

from ..utils.errors import CapacityError

if TYPE_CHECKING:
    from .sequence_info import SequenceInfo


def count_prefill_if_valid(
    info: SequenceInfo,
    seq_lens: list[int],
    input_pos: list[int],
    page_counts: list[int],
    pages: np.ndarray,
    slots: list[int],
) -> int | None:
    """The number of prefill sequences if the batch follows every rule, else None."""
    num = len(seq_lens)
    if not (len(input_pos) == len(page_counts) == len(slots) == num):
        return None
    if not 0 < num <= info.max_batch_size or sum(seq_lens) > info.max_num_tokens:
        return None
    if min(seq_lens) < 1 or min(input_pos) < 0 or max(page_counts) > info.max_pages_per_seq:
        return None
    ends = list(map(add, input_pos, seq_lens))
    if max(ends) > info.max_seq_len:
        return None
    # ceil(end / page_size) <= page_count  <=>  end <= page_count * page_size
    if not all(map(le, ends, map(mul, page_counts, repeat(info.page_size)))):
        return None
    # Every sequence has >= 1 page here (end >= 1), so ``pages`` is not empty. Page ids must be
    # >= 1: the scratch page is 0 and negative ids are out of the pool.
    lowest, highest = _page_id_range(pages)
    if lowest <= info.SCRATCH_PAGE or (info.num_pages is not None and highest >= info.num_pages):
        return None
    if min(slots) < 0 or max(slots) >= info.max_batch_size:
        return None
    if max(seq_lens) == 1 and min(input_pos) > 0:
        return 0  # decode only
    num_prefill = 0
    for length, start in zip(seq_lens, input_pos):
        if length == 1 and start > 0:
            break
        num_prefill += 1
    if num_prefill < num and (max(seq_lens[num_prefill:]) > 1 or min(input_pos[num_prefill:]) < 1):
        return None  # a prefill after a decode
    return num_prefill


def _page_id_range(pages: np.ndarray) -> tuple[int, int]:
    """(lowest, highest) page id; builtins on a short list beat numpy's cost per call."""
    if len(pages) <= 64:
        ids = pages.tolist()
        return min(ids), max(ids)
    return int(np.minimum.reduce(pages)), int(np.maximum.reduce(pages))


def raise_first_violation(
    info: SequenceInfo,
    ids: list[list[int]],
    pos: list[int],
    pages: list[list[int]],
    slots: list[int],
) -> None:
    """Raise the error of the first rule the batch breaks (sequence by sequence)."""
    num = len(ids)
    if not (len(pos) == len(pages) == len(slots) == num):
        raise ValueError(
            f"nest_sequences: input_ids ({num}), input_pos ({len(pos)}), cache_loc "
            f"({len(pages)}) and slot_idx ({len(slots)}) must have one entry per sequence."
        )
    if num == 0:
        raise ValueError("nest_sequences: the batch is empty; pass at least one sequence.")
    if num > info.max_batch_size:
        raise CapacityError(
            f"nest_sequences: {num} sequences exceed max_batch_size={info.max_batch_size}."
        )
    total = sum(len(s) for s in ids)
    if total > info.max_num_tokens:
        raise CapacityError(
            f"nest_sequences: {total} tokens exceed max_num_tokens={info.max_num_tokens}."
        )
    seen_decode = False
    for i, (seq, start, seq_pages, slot) in enumerate(zip(ids, pos, pages, slots)):
        if not seq:
            raise ValueError(f"nest_sequences: sequence {i} has no new tokens.")
        if start < 0:
            raise ValueError(f"nest_sequences: sequence {i} has input_pos {start} < 0.")
        end = start + len(seq)
        if end > info.max_seq_len:
            raise CapacityError(
                f"nest_sequences: sequence {i} would reach {end} tokens, more than "
                f"max_seq_len={info.max_seq_len}."
            )
        is_decode = len(seq) == 1 and start > 0
        if seen_decode and not is_decode:
            raise ValueError(
                f"nest_sequences: sequence {i} is a prefill ({len(seq)} new tokens at "
                f"input_pos {start}) after a decode sequence; put prefill sequences first."
            )
        seen_decode |= is_decode
        needed = math.ceil(end / info.page_size)
        if len(seq_pages) < needed:
            raise CapacityError(
                f"nest_sequences: sequence {i} needs {needed} pages of {info.page_size} "
                f"tokens for {end} tokens but cache_loc gives {len(seq_pages)}."
            )
        if len(seq_pages) > info.max_pages_per_seq:
            raise CapacityError(
                f"nest_sequences: sequence {i} has {len(seq_pages)} pages, more than "
                f"max_pages_per_seq={info.max_pages_per_seq} (max_seq_len / page_size)."
            )
        limit = info.num_pages
        for page in seq_pages:
            if page == info.SCRATCH_PAGE:
                raise ValueError(
                    f"nest_sequences: sequence {i} uses page {info.SCRATCH_PAGE}, the reserved "
                    "scratch page; real sequences get pages 1..num_pages-1."
                )
            if page < 0 or (limit is not None and page >= limit):
                raise ValueError(
                    f"nest_sequences: sequence {i} uses page {page}, outside the pool "
                    f"(1..{(limit or 0) - 1})."
                )
        if not 0 <= slot < info.max_batch_size:
            raise ValueError(
                f"nest_sequences: sequence {i} has slot_idx {slot}, outside "
                f"0..{info.max_batch_size - 1} (slot {info.spare_slot} is for padding)."
            )
