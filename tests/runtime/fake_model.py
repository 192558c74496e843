"""A fake packed-batch model with a real paged "KV cache", for engine tests without a graph.

``FakeSequenceInfo.nest_sequences`` records the batch like ``SequenceInfo`` does; ``FakeModel``
writes every new token into its page table entry (``cache[page, row]``), then computes the
logits of each sequence's last token from *everything the cache holds for that sequence*,
read back through the page table. Wrong positions, wrong or shared pages, or a scratch page
handed out all change the logits (and the test's tokens), or trip an assertion.
"""

from __future__ import annotations

import torch

VOCAB = 384  # the built-in tiny-llama tokenizer's size


class FakeSequenceInfo:
    def __init__(self, page_size: int, num_pages: int, max_num_tokens: int = 64):
        self.page_size = page_size
        self.num_pages = num_pages
        self.max_num_tokens = max_num_tokens
        self.batches: list[dict] = []  # every nested batch, for assertions

    def nest_sequences(self, input_ids, input_pos, cache_loc, slot_idx=None):
        assert len(input_ids) == len(input_pos) == len(cache_loc)
        self.current = {
            "input_ids": [list(ids) for ids in input_ids],
            "input_pos": list(input_pos),
            "cache_loc": [list(pages) for pages in cache_loc],
            "slot_idx": list(slot_idx) if slot_idx is not None else None,
        }
        self.batches.append(self.current)

    def gather_last_logits(self, logits):
        return logits


class FakeCachedSequenceInterface:
    def __init__(self, page_size: int = 4, num_pages: int = 64, max_num_tokens: int = 64):
        self.info = FakeSequenceInfo(page_size, num_pages, max_num_tokens)
        self.num_pages = num_pages
        self.page_size = page_size
        self.device = "cpu"

    @property
    def named_args(self):
        return {"batch": self.info.current}


class FakeModel:
    """logits(sequence) = a fixed function of all its tokens and their positions."""

    def __init__(self, cm: FakeCachedSequenceInterface):
        self.page_size = cm.info.page_size
        self.cache = torch.full((cm.num_pages, self.page_size), -1, dtype=torch.long)
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        out = []
        seen_pages: set[int] = set()
        saw_decode = False
        for ids, pos, pages in zip(batch["input_ids"], batch["input_pos"], batch["cache_loc"]):
            is_decode = len(ids) == 1 and pos > 0
            assert not (saw_decode and not is_decode), "prefill sequences must come first"
            saw_decode |= is_decode
            assert 0 not in pages, "page 0 is the reserved scratch page"
            assert not seen_pages & set(pages), "two sequences share a page"
            seen_pages |= set(pages)
            end = pos + len(ids)
            assert len(pages) == -(-end // self.page_size), "page table does not match length"
            for offset, token in enumerate(ids):
                p = pos + offset
                self.cache[pages[p // self.page_size], p % self.page_size] = token
            tokens = [
                int(self.cache[pages[p // self.page_size], p % self.page_size]) for p in range(end)
            ]
            assert -1 not in tokens, "read a cache row that was never written"
            out.append(logits_of(tokens))
        return torch.stack(out)


def logits_of(tokens: list[int]) -> torch.Tensor:
    """A deterministic, well spread distribution over VOCAB that depends on every token."""
    key = 0
    for position, token in enumerate(tokens):
        key = (key * 1_000_003 + (token + 1) * (position + 7)) % 2_147_483_647
    generator = torch.Generator().manual_seed(key)
    return torch.randn(VOCAB, generator=generator) * 2.0


def reference_greedy(prompt: list[int], num_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(num_tokens):
        tokens.append(int(logits_of(tokens).argmax()))
    return tokens[len(prompt) :]
