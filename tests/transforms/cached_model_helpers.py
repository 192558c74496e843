"""Helpers for the cache_init / weight_load / compile transform tests.

- ``TinyAttentionModel``: two attention layers calling ``torch_attention`` directly (fast to
  export), with GQA and optional sliding window / logit cap / sinks.
- ``export_tiny``: that model as an exported GraphModule (weights real, on CPU).
- ``CachedRunner``: drives a cached graph step by step (page allocation, packing) and returns
  every token's logits per sequence, for comparison with full recomputation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.export import Dim

from autodeploy.export import torch_export_to_gm
from autodeploy.shim import CachedSequenceInterface

VOCAB, HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 32, 32, 4, 2, 8


class TinyAttentionModel(nn.Module):
    def __init__(
        self,
        layout="bsnd",
        num_layers=2,
        sliding_window=None,
        logit_cap=None,
        use_sinks=False,
        seed=0,
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.layout = layout
        self.sliding_window, self.logit_cap = sliding_window, logit_cap
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.q = nn.ModuleList(nn.Linear(HIDDEN, HEADS * HEAD_DIM) for _ in range(num_layers))
        self.kv = nn.ModuleList(
            nn.Linear(HIDDEN, 2 * KV_HEADS * HEAD_DIM) for _ in range(num_layers)
        )
        self.sinks = nn.Parameter(torch.randn(HEADS)) if use_sinks else None
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, input_ids, position_ids):
        b, s = input_ids.shape
        x = self.embed(input_ids) + position_ids[..., None].float() * 0.01
        for q_proj, kv_proj in zip(self.q, self.kv):
            q = q_proj(x).view(b, s, HEADS, HEAD_DIM)
            k, v = kv_proj(x).view(b, s, 2, KV_HEADS, HEAD_DIM).unbind(2)
            if self.layout == "bnsd":
                q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            out = torch.ops.auto_deploy.torch_attention(
                q,
                k,
                v,
                None,
                0.0,
                True,
                None,
                self.sinks,
                self.sliding_window,
                self.logit_cap,
                self.layout,
            )
            if self.layout == "bnsd":
                out = out.transpose(1, 2)
            x = x + out.reshape(b, s, HIDDEN)
        return self.head(x)


def export_tiny(**kwargs):
    """(eager model, exported GraphModule) of ``TinyAttentionModel(**kwargs)``."""
    return export_with_dynamic_dims(TinyAttentionModel(**kwargs).eval(), VOCAB)


def export_with_dynamic_dims(model: nn.Module, vocab: int):
    """(model, GraphModule) exported with dynamic batch and sequence dims."""
    inputs = {
        "input_ids": torch.randint(0, vocab, (2, 4)),
        "position_ids": torch.arange(4).repeat(2, 1),
    }
    dims = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
    gm = torch_export_to_gm(model, inputs, {"input_ids": dims, "position_ids": dict(dims)})
    return model, gm


def make_cm(
    page_size=4, max_seq_len=64, max_batch_size=4, max_num_tokens=128, device="cpu", **kv
) -> CachedSequenceInterface:
    return CachedSequenceInterface(
        max_seq_len=max_seq_len,
        max_batch_size=max_batch_size,
        max_num_tokens=max_num_tokens,
        device=device,
        kv_cache_config={"tokens_per_block": page_size, **kv},
    )


class CachedRunner:
    """Feeds token chunks of several sequences to a cached graph, one packed step at a time.

    Pages are handed out from the end of the pool backwards, so a sequence's pages are never
    contiguous in the order the model reads them.
    """

    def __init__(self, gm, cm: CachedSequenceInterface):
        self.gm, self.cm = gm, cm
        self.tokens: dict[int, list[int]] = {}
        self.pages: dict[int, list[int]] = {}
        self.free = list(range(1, cm.num_pages))
        self.slots: dict[int, int] = {}  # sequence -> its state slot (stable across steps)

    def step(self, schedule: list[tuple[int, list[int]]]) -> dict[int, torch.Tensor]:
        """``schedule``: [(sequence id, new tokens)], prefill first. Returns the logits of the new
        tokens of each sequence ([num_new, vocab])."""
        page_size = self.cm.page_size
        ids, pos, pages = [], [], []
        for seq, new in schedule:
            history = self.tokens.setdefault(seq, [])
            seq_pages = self.pages.setdefault(seq, [])
            while len(seq_pages) * page_size < len(history) + len(new):
                seq_pages.append(self.free.pop())
            ids.append(list(new))
            pos.append(len(history))
            pages.append(list(seq_pages))
        slots = [self.slots.setdefault(seq, len(self.slots)) for seq, _ in schedule]
        self.cm.info.nest_sequences(ids, pos, pages, slot_idx=slots)
        with torch.inference_mode():
            logits = self.gm(**self.cm.named_args)
        flat = logits.reshape(-1, logits.shape[-1])
        out, row = {}, 0
        for seq, new in schedule:
            out[seq] = flat[row : row + len(new)]
            row += len(new)
            self.tokens[seq].extend(new)
        last = self.cm.info.gather_last_logits(logits)
        for index, (seq, _) in enumerate(schedule):
            assert torch.equal(last[index], out[seq][-1])
        return out
