"""Incremental detokenization: the text a sequence gained with its newest tokens.

Decoding one token at a time is wrong for byte-level and sentencepiece tokenizers (a character
can span tokens; a leading space depends on the previous token), and decoding the whole output
every step costs O(length) per token. ``IncrementalDetokenizer`` decodes a short window: the
tokens since the last emitted text plus the previously emitted chunk as context, and emits the
new text once it no longer ends in an incomplete character ("\\ufffd").
"""

from __future__ import annotations

from typing import Any

_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    """Feed all output token ids with ``update(token_ids)``; read ``text``."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.text = ""
        self._prefix_offset = 0  # start of the context window
        self._read_offset = 0  # tokens before this index are already in `text`

    def update(self, token_ids: list[int]) -> str:
        """Detokenize what was appended to ``token_ids`` since the last call; return the delta."""
        if len(token_ids) <= self._read_offset:
            return ""
        prefix = self._decode(token_ids[self._prefix_offset : self._read_offset])
        full = self._decode(token_ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(_INCOMPLETE):
            return ""  # wait for the rest of the character (or nothing printable yet)
        delta = full[len(prefix) :]
        self.text += delta
        self._prefix_offset = self._read_offset  # the last emitted chunk is the next context
        self._read_offset = len(token_ids)
        return delta

    def _decode(self, token_ids: list[int]) -> str:
        if not token_ids:
            return ""
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens)
