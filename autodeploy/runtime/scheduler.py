"""Scheduler: continuous batching of waiting and running requests into steps.

Every step takes, in this order, until the step's token budget (``max_num_tokens``) is used:

1. every running request that is decoding (1 token each);
2. running requests whose prompt is not fully in the cache yet (chunked-prefill continuations),
   oldest first, as many prompt tokens as the budget allows;
3. new requests, first come first served, while fewer than ``max_batch_size`` requests run and
   the KV block manager can reserve the request's whole maximum length (prompt + max new
   tokens). If the oldest waiting request does not fit, nobody behind it is admitted
   (no starvation of large requests). A new request whose prompt is longer than the budget left
   starts with a chunk of it.

The batch lists prefill sequences first, then decode sequences (the packed-batch contract).
Nothing is ever preempted: the reservation made at admission covers the whole request (see
``kv_block_manager.py``). A request that could never run (longer than ``max_seq_len``, or
needing more pages than the whole cache has) is refused by ``check_fits`` before it queues.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..utils.errors import CapacityError
from .kv_block_manager import KVBlockManager
from .request import Request, RequestState


@dataclass
class ScheduledBatch:
    """One step: ``(request, number of new tokens)`` pairs, prefill first, then decode."""

    entries: list[tuple[Request, int]] = field(default_factory=list)
    num_prefill: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


class Scheduler:
    """FCFS continuous-batching scheduler (see the module docstring)."""

    def __init__(
        self,
        block_manager: KVBlockManager,
        *,
        max_batch_size: int,
        max_num_tokens: int,
        max_seq_len: int,
    ):
        self.block_manager = block_manager
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.max_seq_len = max_seq_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order
        self._free_slots = list(range(max_batch_size - 1, -1, -1))

    # ------------------------------------------------------------------ queue

    def check_fits(self, request: Request) -> None:
        """Raise ``CapacityError`` if ``request`` can never be scheduled (message: both sizes)."""
        total = request.max_total_len
        # A negative id: checked before it was queued (Engine.check_request); it has no id yet.
        name = "the request" if request.request_id < 0 else f"request {request.request_id}"
        what = (
            f"{name} needs {total} tokens (prompt {request.prompt_len} + "
            f"max_tokens {request.max_new_tokens})"
        )
        if request.prompt_len == 0:
            raise CapacityError(f"{name}: the prompt is empty.")
        if request.max_new_tokens < 1:
            raise CapacityError(
                f"{name}: the prompt has {request.prompt_len} tokens, which "
                f"leaves no room to generate under max_seq_len={self.max_seq_len}. Shorten the "
                "prompt or raise max_seq_len."
            )
        if total > self.max_seq_len:
            raise CapacityError(
                f"{what}, more than max_seq_len={self.max_seq_len}. Shorten the prompt, lower "
                "max_tokens, or raise max_seq_len."
            )
        capacity = self.block_manager.capacity_tokens
        if self.block_manager.pages_for(total) > self.block_manager.num_usable_pages:
            raise CapacityError(
                f"{what}, more than the whole KV cache holds ({capacity} tokens = "
                f"{self.block_manager.num_usable_pages} pages of "
                f"{self.block_manager.page_size}). Raise kv_cache_config.max_tokens (or "
                "free_gpu_memory_fraction), or shorten the request."
            )

    def add(self, request: Request) -> None:
        self.check_fits(request)
        request.state = RequestState.WAITING
        self.waiting.append(request)

    def finish(self, request: Request) -> None:
        """Take a finished (or aborted) request out and release its pages and slot."""
        if request in self.running:
            self.running.remove(request)
            self.block_manager.free(request.request_id)
            if request.slot is not None:
                self._free_slots.append(request.slot)
                request.slot = None
        elif request in self.waiting:
            self.waiting.remove(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------------ scheduling

    def schedule(self) -> ScheduledBatch:
        budget = self.max_num_tokens
        decode: list[tuple[Request, int]] = []
        prefilling: list[Request] = []
        for request in self.running:  # one pass: decodes take the budget first
            if request.num_computed < request.prompt_len:  # request.is_prefilling, inlined
                prefilling.append(request)
            elif budget > 0:
                decode.append((request, 1))
                budget -= 1
        prefill: list[tuple[Request, int]] = []
        for request in prefilling:
            if budget > 0:
                chunk = min(request.prompt_len - request.num_computed, budget)
                prefill.append((request, chunk))
                budget -= chunk
        max_running = min(self.max_batch_size, self.max_num_tokens)
        while self.waiting and budget > 0 and len(self.running) < max_running:
            request = self.waiting[0]
            if not self.block_manager.can_reserve(request.max_total_len):
                break
            self.waiting.popleft()
            self.block_manager.reserve(request.request_id, request.max_total_len)
            request.slot = self._free_slots.pop()
            request.state = RequestState.RUNNING
            self.running.append(request)
            chunk = min(request.prompt_len, budget)
            prefill.append((request, chunk))
            budget -= chunk
        if not prefill:
            return ScheduledBatch(entries=decode, num_prefill=0)
        # The contract's "decode" is exactly 1 new token at input_pos > 0; a 1-token prefill
        # continuation is one too, so it goes with the decodes (prefill first, stable order).
        first = [e for e in prefill if e[1] > 1 or e[0].num_computed == 0]
        later = [e for e in prefill if not (e[1] > 1 or e[0].num_computed == 0)]
        return ScheduledBatch(entries=first + later + decode, num_prefill=len(first))
