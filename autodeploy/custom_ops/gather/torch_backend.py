"""Reference token gather: keep the last token of every sequence. This code *is* the spec."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.custom_op("auto_deploy::torch_gather_last_tokens", mutates_args=())
def torch_gather_last_tokens(hidden: Tensor, cu_seqlen: Tensor) -> Tensor:
    """The hidden state of each sequence's last token, in the input's leading layout.

    hidden: [rows, tokens_per_row, H], the packed batch of ``SequenceInfo`` ([1, total_tokens,
    H] when the batch has prefill, [B, 1, H] when it is decode-only); cu_seqlen: [B + 1]
    cumulative new-token counts (padding rows included). Sequence i ends at flat token
    ``cu_seqlen[i + 1] - 1``. Returns [rows, B / rows, H]: [1, B, H] or [B, 1, H].
    """
    hidden_size = hidden.shape[-1]
    last_tokens = cu_seqlen[1:].long() - 1  # [B]
    gathered = hidden.reshape(-1, hidden_size).index_select(0, last_tokens)  # [B, H]
    return gathered.view(hidden.shape[0], -1, hidden_size)


@torch_gather_last_tokens.register_fake
def _torch_gather_last_tokens_fake(hidden, cu_seqlen):
    num_sequences = cu_seqlen.shape[0] - 1
    return hidden.new_empty(hidden.shape[0], num_sequences // hidden.shape[0], hidden.shape[-1])
