"""A two-layer Mamba-2 style model written with the canonical ops (fast to export), for the
cache_init and fusion tests of the ``ssm`` / ``causal_conv`` families."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from cached_model_helpers import export_with_dynamic_dims

VOCAB, HIDDEN, HEADS, HEAD_DIM, GROUPS, STATE, KERNEL, CHUNK = 32, 32, 4, 8, 2, 8, 4, 4
INNER = HEADS * HEAD_DIM
CONV_DIM = INNER + 2 * GROUPS * STATE
ad = torch.ops.auto_deploy


class TinyMambaMixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(HIDDEN, CONV_DIM + HEADS)
        self.conv1d = nn.Conv1d(CONV_DIM, CONV_DIM, KERNEL, groups=CONV_DIM)
        self.A_log = nn.Parameter(torch.rand(HEADS))
        self.D = nn.Parameter(torch.randn(HEADS))
        self.dt_bias = nn.Parameter(torch.randn(HEADS))
        self.out_proj = nn.Linear(INNER, HIDDEN)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        b, s, _ = hidden.shape
        x_bc, dt = self.in_proj(hidden).split([CONV_DIM, HEADS], dim=-1)
        x_bc = F.silu(ad.torch_causal_conv1d(x_bc, self.conv1d.weight, self.conv1d.bias, None))
        x, B, C = x_bc.split([INNER, GROUPS * STATE, GROUPS * STATE], dim=-1)
        y = ad.torch_ssm(
            x.view(b, s, HEADS, HEAD_DIM),
            -torch.exp(self.A_log.float()),
            B.view(b, s, GROUPS, STATE),
            C.view(b, s, GROUPS, STATE),
            self.D,
            dt,
            self.dt_bias,
            [0.0, float("inf")],
            CHUNK,
        )
        return self.out_proj(y.reshape(b, s, INNER))


class TinyMambaModel(nn.Module):
    def __init__(self, num_layers: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.mixers = nn.ModuleList(TinyMambaMixer() for _ in range(num_layers))
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for mixer in self.mixers:
            x = x + mixer(x)
        return self.head(x)


def export_tiny_mamba(**kwargs):
    """(eager model, exported GraphModule) of ``TinyMambaModel(**kwargs)``."""
    return export_with_dynamic_dims(TinyMambaModel(**kwargs).eval(), VOCAB)
