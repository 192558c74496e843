"""Reference RoPE ops. The code below *is* the specification of their semantics.

All three take the query and key together and return ``(q_out, k_out)`` with the inputs'
shapes and dtypes; the rotation is computed in float32.

Partial rotary embeddings: each op takes the *full* head and reads the rotary width ``r`` from
the cos/sin (or frequency) tensor. Only the first ``r`` channels of every head rotate; the rest
pass through unchanged (Phi, GPT-NeoX, StableLM, GLM). ``r == head_dim`` is ordinary RoPE.

Layouts: ``unsqueeze_dim`` is the heads dimension of q/k that cos/sin ([batch, seq, r]) are
broadcast over: 1 for [batch, heads, seq, head_dim] ("bnsd"), 2 for [batch, seq, heads,
head_dim] ("bsnd").
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rotate_half(x: Tensor) -> Tensor:
    """[x1, x2] -> [-x2, x1] on the last dim (the halves of the rotary channels)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _split_rotary(x: Tensor, rotary_dim: int) -> tuple[Tensor, Tensor]:
    return x[..., :rotary_dim], x[..., rotary_dim:]


@torch.library.custom_op("auto_deploy::torch_rope_with_explicit_cos_sin", mutates_args=())
def torch_rope_with_explicit_cos_sin(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, unsqueeze_dim: int = 1
) -> tuple[Tensor, Tensor]:
    """Hugging Face rotate-half RoPE: ``x * cos + rotate_half(x) * sin`` on the rotary channels.

    cos, sin: [batch, seq, r] in HF's layout (the two halves repeat the same frequencies).
    """
    cos = cos.float().unsqueeze(unsqueeze_dim)  # [b, 1, s, r] or [b, s, 1, r]
    sin = sin.float().unsqueeze(unsqueeze_dim)
    rotary_dim = cos.shape[-1]

    def rotate_fp32(x32: Tensor) -> Tensor:
        return x32 * cos + _rotate_half(x32) * sin

    def rotate(x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and x.shape[-1] == rotary_dim:  # no split, no casts
            return rotate_fp32(x)
        x_rot, x_pass = _split_rotary(x, rotary_dim)
        return torch.cat((rotate_fp32(x_rot.float()).to(x.dtype), x_pass), dim=-1)

    return rotate(q), rotate(k)


@torch_rope_with_explicit_cos_sin.register_fake
def _rope_cos_sin_fake(q, k, cos, sin, unsqueeze_dim=1):
    return torch.empty_like(q), torch.empty_like(k)


@torch.library.custom_op("auto_deploy::torch_rope_with_complex_freqs", mutates_args=())
def torch_rope_with_complex_freqs(
    xq: Tensor, xk: Tensor, freqs_cis: Tensor, unsqueeze_dim: int = 2
) -> tuple[Tensor, Tensor]:
    """RoPE on interleaved pairs (x[2i], x[2i+1]) as complex numbers, times ``freqs_cis``.

    freqs_cis: complex [batch, seq, r / 2] (``cos + i sin`` per pair), as in Meta's Llama code.
    """
    freqs = freqs_cis.unsqueeze(unsqueeze_dim)  # [b, s, 1, r/2] or [b, 1, s, r/2]
    rotary_dim = 2 * freqs.shape[-1]

    def rotate(x: Tensor) -> Tensor:
        x_rot, x_pass = _split_rotary(x, rotary_dim)
        pairs = torch.view_as_complex(x_rot.float().reshape(*x_rot.shape[:-1], -1, 2))
        x_rot = torch.view_as_real(pairs * freqs).flatten(-2)  # back to [..., r]
        return torch.cat((x_rot.to(x.dtype), x_pass), dim=-1)

    return rotate(xq), rotate(xk)


@torch_rope_with_complex_freqs.register_fake
def _rope_complex_fake(xq, xk, freqs_cis, unsqueeze_dim=2):
    return torch.empty_like(xq), torch.empty_like(xk)


@torch.library.custom_op("auto_deploy::torch_rope_with_qk_interleaving", mutates_args=())
def torch_rope_with_qk_interleaving(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, unsqueeze_dim: int = 1
) -> tuple[Tensor, Tensor]:
    """DeepSeek RoPE: de-interleave the rotary channels, then rotate-half RoPE.

    The rotary channels come in as pairs (x0, x1, x2, x3, ...) and leave de-interleaved:
    (x0, x2, ..., x1, x3, ...) rotated. cos, sin: [batch, seq, r] in HF rotate-half layout.
    """
    cos = cos.float().unsqueeze(unsqueeze_dim)
    sin = sin.float().unsqueeze(unsqueeze_dim)
    rotary_dim = cos.shape[-1]

    def rotate(x: Tensor) -> Tensor:
        x_rot, x_pass = _split_rotary(x, rotary_dim)
        pairs = x_rot.float().reshape(*x_rot.shape[:-1], rotary_dim // 2, 2)
        x_rot = pairs.transpose(-1, -2).reshape(x_rot.shape)  # evens first, then odds
        x_rot = x_rot * cos + _rotate_half(x_rot) * sin
        return torch.cat((x_rot.to(x.dtype), x_pass), dim=-1)

    return rotate(q), rotate(k)


@torch_rope_with_qk_interleaving.register_fake
def _rope_interleaved_fake(q, k, cos, sin, unsqueeze_dim=1):
    return torch.empty_like(q), torch.empty_like(k)
