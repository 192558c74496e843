"""Host-only mode of the benchmark: the real engine loop over a model that costs nothing.

``HostOnlySystem`` runs ``autodeploy``'s ``Engine`` exactly as ``LLM.generate`` does (scheduler,
KV page bookkeeping, ``nest_sequences`` with its one host-to-device copy, ``gather_last_logits``,
the sampler and its device-to-host copy of the tokens, stop checks), but the model is an
``InstantModel``: it returns a view of one precomputed logits row for every token, without
launching any work. The time per decode step measured this way is the host work a real step
adds on top of the model's own GPU time, which is the budget issue 5 item 4 talks about ("must
not dominate a 1 ms step").

The sequence interface is the real ``CachedSequenceInterface`` with the attention backend's
standard metadata arguments active and, for CUDA-graph compile backends, decode batches padded
to the benchmarked batch sizes, as in a real build. Not included: host hooks of a particular
attention backend (FlashInfer's ``plan()``), and no KV cache is allocated (nothing reads it).

``EngineStats`` splits each step into ``host_s`` (schedule, pages, packing, bookkeeping) and
``forward_s`` (model + gather + sampling, which ends with the step's only sync).
"""

from __future__ import annotations

from typing import Any

import torch

from .bench_systems import CUDA_GRAPH_BACKENDS, BenchSystem, RunShape, SystemSpec

_PAGE_SIZE = 32


class InstantModel:
    """``model(**named_args)`` -> logits of the right shape at once: ``[rows, 1, V]`` for a
    decode batch, ``[1, tokens, V]`` with prefill; every token gets the same precomputed row
    (a stride-0 view, so nothing is launched or copied)."""

    def __init__(self, vocab_size: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        row = torch.randn(vocab_size, generator=generator).to(device=device, dtype=dtype)
        self.row = row
        self.calls = 0

    def __call__(self, input_ids: torch.Tensor, **_: Any) -> torch.Tensor:
        self.calls += 1
        return self.row.expand(*input_ids.shape, self.row.shape[0])


class HostOnlySystem(BenchSystem):
    """The engine over an ``InstantModel`` (see the module docstring)."""

    def __init__(self, spec: SystemSpec, shape: RunShape, vocab_size: int):
        super().__init__(spec, shape)
        self.vocab_size = vocab_size
        self.engine: Any = None
        self.steps_timed = 0

    def build(self) -> None:
        from ..custom_ops.attention.descriptor import AttentionRegistry
        from ..runtime.engine import Engine
        from ..shim import CachedSequenceInterface

        shape = self.shape
        pages_per_seq = -(-shape.max_seq_len // _PAGE_SIZE)
        max_num_tokens = max(shape.max_batch_size * shape.isl, shape.max_seq_len)
        cm = CachedSequenceInterface(
            max_seq_len=shape.max_seq_len,
            max_batch_size=shape.max_batch_size,
            max_num_tokens=max_num_tokens,
            device=shape.device,
            kv_cache_config={
                "tokens_per_block": _PAGE_SIZE,
                "max_tokens": shape.max_batch_size * pages_per_seq * _PAGE_SIZE,
            },
        )
        for name in AttentionRegistry.get(self.spec.attn_backend).get_standard_metadata_args():
            cm.info.activate_arg(name)
        cm.initialize_resources()  # no caches registered: only sizes the page pool
        if self.spec.compile_backend in CUDA_GRAPH_BACKENDS:
            cm.info.set_padded_batch_sizes(sorted(set(shape.batch_sizes)))
        self.model = InstantModel(self.vocab_size, shape.dtype, shape.device)
        self.engine = Engine(
            self.model,
            cm,
            num_pages=cm.num_pages,
            page_size=cm.page_size,
            max_batch_size=shape.max_batch_size,
            max_num_tokens=max_num_tokens,
            max_seq_len=shape.max_seq_len,
            device=shape.device,
        )

    def generate(self, prompts: torch.Tensor, num_tokens: int) -> list[list[int]]:
        from ..runtime.sampling import SamplingParams

        params = SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True)
        order = [self.engine.add_request(row, params).request_id for row in prompts.tolist()]
        finished = {out.request_id: out for out in self.engine.run()}
        return [list(finished[request_id].outputs[0].token_ids) for request_id in order]

    def engine_stats(self) -> Any:
        return self.engine.stats

    def close(self) -> None:
        self.engine = None
        self.model = None
