"""CPU stand-ins for CUDA-graph capture, shared by the compile tests.

``FakeCapture`` keeps the one property of a CUDA graph the runner relies on: a replay re-reads
the tensors captured (same objects, so same addresses and the *capture-time shapes*) and writes
its result into the output tensors made at capture. It records every warm-up and capture with
the batch size the ``SequenceInfo`` had at that moment.

``ToyModel`` is a packed-batch model of plain tensor ops that reads the model inputs and one
persistent "cache": logits = head(embed(ids) + 0.1 * position) + cache.sum(0).
``ToyInterface`` is the smallest ``CachedSequenceInterface`` stand-in: a real ``SequenceInfo`` and
a public ``caches`` dict.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from autodeploy.shim import SequenceInfo

VOCAB, HIDDEN = 16, 8


class FakeGraph:
    def __init__(self, fn, output):
        self.fn, self.output = fn, output

    def replay(self) -> None:
        with torch.inference_mode():  # the outputs were made in inference mode, like a capture
            fresh = self.fn()
            self.output.copy_(fresh)  # a graph writes into the buffers it captured


class FakeCapture:
    def __init__(self, info: SequenceInfo, fail_at: int | None = None):
        self.info = info
        self.fail_at = fail_at
        self.events: list[tuple[str, int]] = []
        self.pools: list[object] = []

    def new_pool(self) -> object:
        self.pools.append(object())
        return self.pools[-1]

    def warm_up(self, fn, num_runs: int) -> None:
        for _ in range(num_runs):
            self.events.append(("warm_up", self.info.batch_size))
            fn()

    def capture(self, fn, pool) -> tuple[FakeGraph, Any]:
        assert pool is self.pools[-1]
        if self.info.batch_size == self.fail_at:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.events.append(("capture", self.info.batch_size))
        output = fn()
        return FakeGraph(fn, output), output

    def reserved_bytes(self) -> int:
        return 0


class ToyModel(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, input_ids, position_ids, bias_cache, **metadata):
        x = self.embed(input_ids) + 0.1 * position_ids[..., None].float()
        return self.head(x) + bias_cache.sum(0)


class ToyInterface:
    def __init__(self, max_batch_size: int = 8, page_size: int = 4, args=("cu_seqlen",)):
        self.info = SequenceInfo(max_seq_len=64, max_batch_size=max_batch_size, page_size=page_size)
        self.info.set_num_pages(200)
        for name in args:
            self.info.activate_arg(name)
        self.caches = {"bias_cache": torch.randn(3, VOCAB)}

    @property
    def named_args(self) -> dict[str, torch.Tensor]:
        return {**self.info.named_args, **self.caches}

    def decode_step(self, batch: int, step: int = 0, seed: int = 0):
        """Nest a decode-only batch of ``batch`` sequences whose page counts differ; returns
        (input_ids, input_pos) of the real rows."""
        generator = torch.Generator().manual_seed(seed * 1000 + batch * 10 + step)
        ids = torch.randint(0, VOCAB, (batch,), generator=generator).tolist()
        positions = [3 + 5 * i + step for i in range(batch)]  # different page counts per row
        pages = [list(range(1 + 16 * i, 1 + 16 * i + p // 4 + 1)) for i, p in enumerate(positions)]
        self.info.nest_sequences([[t] for t in ids], positions, pages)
        return [[t] for t in ids], positions
