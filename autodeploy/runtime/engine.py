"""Engine: drives an optimized model step by step over a continuously batched set of requests.

One ``step()``:

1. ``scheduler.schedule()`` -> the batch: ``(request, n new tokens)``, prefill first;
2. for each entry, the block manager assigns pages so the request can hold ``num_computed + n``
   tokens; the new tokens are ``request.token_ids[num_computed : num_computed + n]``;
3. ``cm.info.nest_sequences(input_ids, input_pos, cache_loc, slot_idx)`` packs the batch (one
   host-to-device copy);
4. ``logits = self._forward()`` (the one call of the model); ``cm.info.gather_last_logits``
   -> [B, vocab]. A step carrying a prefill chunk of a request that asks for
   ``prompt_logprobs`` runs the model without its logit gather (``all_token_logits.py``);
5. the sampler applies the penalties and picks one token per row (rows whose prompt is not
   fully prefilled yet ignore theirs); the only device-to-host copy of the step is the B new
   tokens (plus the log-probabilities of the rows that ask for them);
6. each request takes its token and checks its stop conditions; finished requests release their
   pages and slot and are returned as ``RequestOutput``s.

Host work per step is O(batch size + new tokens) Python; nothing loops over the vocabulary.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..utils.errors import CapacityError, ConfigError
from ..utils.logger import logger
from .all_token_logits import without_logit_gather
from .kv_block_manager import KVBlockManager
from .logprobs import logprob_entries, prompt_logprob_entries
from .request import Request, RequestOutput
from .sampler import Sampler
from .sampling import SamplingParams
from .scheduler import ScheduledBatch, Scheduler


@dataclass
class EngineStats:
    """Counters since the engine was made (for progress lines and benchmarks)."""

    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    generated_tokens: int = 0
    forward_s: float = 0.0  # time in model + gather + sample (device work + its syncs)
    host_s: float = 0.0  # time in scheduling, packing and bookkeeping


class Engine:
    """Generation loop over ``model(**cm.named_args)`` (see the module docstring).

    ``cm`` is the ``CachedSequenceInterface`` the model was built with; ``num_pages`` and
    ``page_size`` describe its paged KV pool.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        cm: Any,
        *,
        num_pages: int,
        page_size: int,
        max_batch_size: int,
        max_num_tokens: int,
        max_seq_len: int,
        device: torch.device | str,
        tokenizer: Any | None = None,
        eos_token_ids: Iterable[int] = (),
        seed: int | None = None,
        progress_interval_s: float = 5.0,
    ):
        self.model = model
        self.cm = cm
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.block_manager = KVBlockManager(num_pages, page_size)
        self.scheduler = Scheduler(
            self.block_manager,
            max_batch_size=max_batch_size,
            max_num_tokens=max_num_tokens,
            max_seq_len=max_seq_len,
        )
        self.sampler = Sampler(device, max_rows=max_batch_size)
        self.stats = EngineStats()
        self.progress_interval_s = progress_interval_s
        self._rng = random.Random(seed)
        self._ids = itertools.count()
        self._requests: dict[int, Request] = {}
        self._last_progress = time.perf_counter()
        self._all_token_model: Any | None = None  # made on the first prompt_logprobs request

    # ------------------------------------------------------------------ requests

    def add_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        *,
        prompt: str | None = None,
    ) -> Request:
        """Queue a request. Raises ``CapacityError`` (message with both sizes) if it can never
        fit; the engine and the other requests are unaffected."""
        request = self._new_request(next(self._ids), prompt_token_ids, params, prompt)
        if request.params.prompt_logprobs is not None:
            self._ensure_all_token_model()
        self.scheduler.add(request)  # raises CapacityError before anything is queued
        self._requests[request.request_id] = request
        return request

    def check_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ``CapacityError`` if this request could never run; changes nothing (so any
        thread may call it before handing the request to the thread that steps the engine)."""
        self.scheduler.check_fits(self._new_request(-1, prompt_token_ids, params, None))

    def _new_request(
        self,
        request_id: int,
        prompt_token_ids: list[int],
        params: SamplingParams | None,
        prompt: str | None,
    ) -> Request:
        params = params or SamplingParams()
        token_ids = [int(t) for t in prompt_token_ids]
        max_new = params.max_tokens
        if max_new is None:
            max_new = self.max_seq_len - len(token_ids)
        return Request(
            request_id,
            token_ids,
            params,
            max_new,
            prompt=prompt,
            tokenizer=self.tokenizer,
            shared_rng=self._rng,
        )

    def _ensure_all_token_model(self) -> Any:
        if self._all_token_model is None:
            self._all_token_model = without_logit_gather(self.model)
            if self._all_token_model is None:
                raise ConfigError(
                    "prompt_logprobs needs the optimized GraphModule, but the model "
                    f"({type(self.model).__name__}) does not expose one. Request it without "
                    "prompt_logprobs, or build with compile_backend torch-simple."
                )
        return self._all_token_model

    def make_rejected(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams | None,
        error: CapacityError,
        prompt: str | None = None,
    ) -> RequestOutput:
        """The output of a request ``add_request`` refused: finish_reason "error"."""
        params = params or SamplingParams()
        request = Request(
            next(self._ids), list(prompt_token_ids), params, params.max_tokens or 0, prompt=prompt
        )
        request.fail(str(error))
        return request.to_output(self.tokenizer)

    def abort_request(self, request_id: int) -> RequestOutput | None:
        request = self._requests.pop(request_id, None)
        if request is None:
            return None
        self.scheduler.finish(request)
        request.abort()
        return request.to_output(self.tokenizer)

    def fail_request(self, request_id: int, message: str) -> RequestOutput | None:
        """End a request with finish_reason "error" (e.g. its step raised) and free its pages."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return None
        self.scheduler.finish(request)
        request.fail(message)
        return request.to_output(self.tokenizer)

    def running_request_ids(self) -> list[int]:
        return [request.request_id for request in self.scheduler.running]

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of the usable KV-cache pages reserved by admitted requests."""
        manager = self.block_manager
        return 1.0 - manager.num_unreserved_pages / max(manager.num_usable_pages, 1)

    @property
    def slot_usage(self) -> float:
        """Fraction of the ``max_batch_size`` sequence slots in use."""
        return len(self.scheduler.running) / max(self.scheduler.max_batch_size, 1)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # ------------------------------------------------------------------ the loop

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Run one forward pass; return the requests that finished in it."""
        start = time.perf_counter()
        batch = self.scheduler.schedule()
        if not batch.entries:
            if self.scheduler.waiting:  # cannot happen with check_fits; guard against a hang
                raise CapacityError("No waiting request can be admitted into an empty engine.")
            return []
        rows = self._prepare(batch)
        all_token_logits = any(
            r.prompt_logprobs is not None and r.num_computed < r.prompt_len
            for r, _ in batch.entries
        )
        forward_start = time.perf_counter()
        logits = self._forward(all_token_logits)
        last_logits = self.cm.info.gather_last_logits(logits)
        last_logits = last_logits.reshape(len(rows), -1)
        if all_token_logits:
            self._record_prompt_logprobs(batch, logits)
        tokens = self.sampler.sample(last_logits, rows)  # syncs: tokens come to the host
        self._record_logprobs(last_logits, rows, tokens)
        forward_end = time.perf_counter()
        finished = self._update(batch, rows, tokens)
        end = time.perf_counter()
        self.stats.forward_s += forward_end - forward_start
        self.stats.host_s += (forward_start - start) + (end - forward_end)
        self.stats.steps += 1
        self._maybe_log_progress(end)
        return finished

    def _forward(self, all_token_logits: bool = False) -> torch.Tensor:
        """Run the model on the packed batch: the only place the engine calls it."""
        model = self._ensure_all_token_model() if all_token_logits else self.model
        return model(**self.cm.named_args)

    def _record_prompt_logprobs(self, batch: ScheduledBatch, logits: torch.Tensor) -> None:
        token_logits = logits.reshape(-1, logits.shape[-1])  # one row per new token, batch order
        offset = 0
        for request, num_new in batch.entries:
            start = request.num_computed  # not yet advanced: _update runs after this
            if request.prompt_logprobs is not None and start < request.prompt_len:
                request.prompt_logprobs.extend(
                    prompt_logprob_entries(
                        token_logits[offset : offset + num_new],
                        request.token_ids[: request.prompt_len],
                        start,
                        request.params.prompt_logprobs or 0,
                    )
                )
            offset += num_new

    def _record_logprobs(
        self, last_logits: torch.Tensor, rows: list[Request | None], tokens: list[int]
    ) -> None:
        wanted = [i for i, r in enumerate(rows) if r is not None and r.logprobs is not None]
        if not wanted:
            return
        index = torch.tensor(wanted, device=last_logits.device)
        entries = logprob_entries(
            last_logits.index_select(0, index),
            [tokens[i] for i in wanted],
            [rows[i].params.logprobs or 0 for i in wanted],  # type: ignore[union-attr]
        )
        for i, entry in zip(wanted, entries):
            rows[i].logprobs.append(entry)  # type: ignore[union-attr]

    def _prepare(self, batch: ScheduledBatch) -> list[Request | None]:
        input_ids: list[list[int]] = []
        input_pos: list[int] = []
        cache_loc: list[list[int]] = []
        slot_idx: list[int] = []
        rows: list[Request | None] = []
        ensure_capacity = self.block_manager.ensure_capacity
        prefill_tokens = decode_tokens = 0
        for request, num_new in batch.entries:
            start = request.num_computed
            end = start + num_new
            token_ids = request.token_ids
            input_ids.append(token_ids[start:end])
            input_pos.append(start)
            cache_loc.append(ensure_capacity(request.request_id, end))
            slot = request.slot
            slot_idx.append(0 if slot is None else slot)
            # Only a row that reaches the end of the known tokens produces the next token.
            rows.append(request if end == len(token_ids) else None)
            if start < request.prompt_len:
                prefill_tokens += num_new
            else:
                decode_tokens += num_new
        self.stats.prefill_tokens += prefill_tokens
        self.stats.decode_tokens += decode_tokens
        self.cm.info.nest_sequences(input_ids, input_pos, cache_loc, slot_idx=slot_idx)
        return rows

    def _update(
        self, batch: ScheduledBatch, rows: list[Request | None], tokens: list[int]
    ) -> list[RequestOutput]:
        finished: list[RequestOutput] = []
        eos_token_ids = self.eos_token_ids
        generated = 0
        for (request, num_new), row, token in zip(batch.entries, rows, tokens):
            request.num_computed += num_new
            if row is None:
                continue
            generated += 1
            if request.append_token(token, eos_token_ids):
                self.scheduler.finish(request)
                self._requests.pop(request.request_id, None)
                finished.append(request.to_output(self.tokenizer))
        self.stats.generated_tokens += generated
        return finished

    def run(self) -> list[RequestOutput]:
        """Step until every queued request finished; return the outputs in finishing order."""
        outputs: list[RequestOutput] = []
        while self.has_unfinished():
            outputs.extend(self.step())
        return outputs

    def _maybe_log_progress(self, now: float) -> None:
        if now - self._last_progress < self.progress_interval_s:
            return
        self._last_progress = now
        stats = self.stats
        busy = stats.forward_s + stats.host_s
        logger.info(
            "step %d: %d running, %d waiting, %d tokens generated (%.1f tok/s over %.1f s busy)",
            stats.steps,
            self.num_running,
            self.num_waiting,
            stats.generated_tokens,
            stats.generated_tokens / busy if busy else 0.0,
            busy,
        )

    def shutdown(self) -> None:
        for request_id in list(self._requests):
            self.abort_request(request_id)
