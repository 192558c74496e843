"""How CUDA graphs are made: the ``GraphCapture`` interface and its CUDA implementation.

The runner only needs: a memory pool shared by all graphs, uncaptured warm-up runs, and a capture
that returns a replayable graph with the (static) output of the captured call. Tests pass a fake
with the same interface to run the runner's bookkeeping on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch


class ReplayableGraph(Protocol):
    def replay(self) -> None: ...


class GraphCapture(Protocol):
    """How graphs are made; ``CudaGraphCapture`` on a GPU, a fake in CPU tests."""

    def new_pool(self) -> Any: ...

    def warm_up(self, fn: Callable[[], Any], num_runs: int) -> None: ...

    def capture(self, fn: Callable[[], Any], pool: Any) -> tuple[ReplayableGraph, Any]:
        """Capture ``fn()``; return the graph and ``fn``'s (static) output."""
        ...

    def reserved_bytes(self) -> int: ...


class CudaGraphCapture:
    """``torch.cuda.CUDAGraph`` capture on ``device``: warm-ups on a side stream, shared pool."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._warmup_stream: torch.cuda.Stream | None = None

    def new_pool(self) -> Any:
        return torch.cuda.graph_pool_handle()

    def warm_up(self, fn: Callable[[], Any], num_runs: int) -> None:
        # On a side stream, as the capture itself: lazy initialisations (cuBLAS handles, Triton
        # and torch.compile compilation) happen here and not inside the graph. One stream for
        # all sizes: the caching allocator keeps blocks per stream.
        if self._warmup_stream is None:
            self._warmup_stream = torch.cuda.Stream(self.device)
        stream = self._warmup_stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(num_runs):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def capture(self, fn: Callable[[], Any], pool: Any) -> tuple[ReplayableGraph, Any]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device), torch.cuda.graph(graph, pool=pool):
            output = fn()
        return graph, output

    def reserved_bytes(self) -> int:
        return torch.cuda.memory_reserved(self.device)
