"""``triton_moe_fused``: ``torch_moe`` as two grouped GEMM kernels over tokens sorted by expert.

Same contract and result as ``torch_moe`` (``torch_backend.py``). Steps:

1. Sort: the T*K (token, slot) pairs are grouped by expert and each group is padded to a
   multiple of ``BLOCK_M`` rows, so every row block belongs to one expert
   (``block_expert[b]``; -1 for the unused blocks at the end). Pairs whose expert id is
   outside ``[0, E)`` (expert parallelism) get no row: no compute, a zero result. Pure tensor
   ops with a static upper bound on the number of blocks (T*K / BLOCK_M + E): no host sync,
   CUDA-graph safe.
2. ``_gate_up_act``: per row block and ``BLOCK_N`` intermediate columns, the gate and up GEMMs
   of the block's expert with the activation and the product fused in registers; writes
   ``intermediate[pair]`` ``[T*K, I]``.
3. ``_down_weighted``: per row block and ``BLOCK_N`` hidden columns, the down GEMM times the
   pair's routing weight; writes ``pair_out[pair]`` ``[T*K, H]``.
4. ``pair_out.view(T, K, H).sum(1)``: each token's top-k results (a fixed-order sum).

float16 / bfloat16 / float32 with float32 accumulation; silu and gelu (erf). CUDA tensors run
compiled; CPU tensors only in the Triton interpreter (``TRITON_INTERPRET=1``, tests).
"""

from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from .._triton_kernel import TritonKernel
from .backends import TRITON_ACTIVATIONS, triton_moe_input_problem
from .torch_backend import check_moe_args, is_gated

BLOCK_M, BLOCK_N, BLOCK_K = 16, 32, 32


def _gate_up_act(
    hidden_ptr,  # [T, H]
    weight_ptr,  # [E, 2I, H]
    pair_ids_ptr,  # [num_blocks * BLOCK_M], pair index or num_pairs (padding)
    block_expert_ptr,  # [num_blocks]
    out_ptr,  # [T*K, I]
    num_pairs,
    top_k,
    hidden,
    inter,
    ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    if expert >= 0:
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        pairs = tl.load(pair_ids_ptr + rows).to(tl.int64)
        row_ok = pairs < num_pairs
        tokens = pairs // top_k
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < inter
        acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        w_base = weight_ptr + expert * 2 * inter * hidden
        for k0 in range(0, hidden, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < hidden
            x = tl.load(
                hidden_ptr + tokens[:, None] * hidden + ks[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            w_mask = k_ok[:, None] & col_ok[None, :]
            w_gate = tl.load(w_base + cols[None, :] * hidden + ks[:, None], mask=w_mask, other=0.0)
            w_up = tl.load(
                w_base + (cols[None, :] + inter) * hidden + ks[:, None], mask=w_mask, other=0.0
            )
            acc_gate += tl.dot(x, w_gate, out_dtype=tl.float32)
            acc_up += tl.dot(x, w_up, out_dtype=tl.float32)
        if ACTIVATION == 0:  # silu
            act = acc_gate / (1.0 + tl.exp(-acc_gate))
        else:  # gelu (erf)
            act = 0.5 * acc_gate * (1.0 + tl.math.erf(acc_gate * 0.7071067811865476))
        out = act * acc_up
        tl.store(
            out_ptr + pairs[:, None] * inter + cols[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & col_ok[None, :],
        )


def _down_weighted(
    inter_ptr,  # [T*K, I]
    weight_ptr,  # [E, H, I]
    routing_ptr,  # [T*K] float32
    pair_ids_ptr,
    block_expert_ptr,
    out_ptr,  # [T*K, H]
    num_pairs,
    hidden,
    inter,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    if expert >= 0:
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        pairs = tl.load(pair_ids_ptr + rows).to(tl.int64)
        row_ok = pairs < num_pairs
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < hidden
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        w_base = weight_ptr + expert * hidden * inter
        for k0 in range(0, inter, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < inter
            x = tl.load(
                inter_ptr + pairs[:, None] * inter + ks[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            w = tl.load(
                w_base + cols[None, :] * inter + ks[:, None],
                mask=k_ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            acc += tl.dot(x, w, out_dtype=tl.float32)
        weight = tl.load(routing_ptr + pairs, mask=row_ok, other=0.0)
        out = acc * weight[:, None]
        tl.store(
            out_ptr + pairs[:, None] * hidden + cols[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & col_ok[None, :],
        )


gate_up_act_kernel = TritonKernel(_gate_up_act)
down_weighted_kernel = TritonKernel(_down_weighted)


def sort_by_expert(selected_experts: Tensor, num_experts: int) -> tuple[Tensor, Tensor]:
    """(pair ids grouped by expert, padded per expert to BLOCK_M; the expert of each block).

    Pairs whose id is outside ``[0, E)`` (another rank's expert) are counted in an extra
    bucket ``E`` that gets no blocks: they are never computed."""
    flat = selected_experts.reshape(-1).long()  # [P], P = T*K
    flat = torch.where((flat >= 0) & (flat < num_experts), flat, num_experts)
    num_pairs = flat.numel()
    num_blocks = -(-num_pairs // BLOCK_M) + num_experts  # upper bound after padding
    device = flat.device
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    padded[num_experts] = 0  # the bucket of non-local pairs gets no rows
    padded_start = torch.cumsum(padded, 0) - padded  # first padded row of each expert
    start = torch.cumsum(counts, 0) - counts  # first sorted pair of each expert
    order = torch.argsort(flat, stable=True)
    sorted_experts = flat[order]
    rank = torch.arange(num_pairs, device=device) - start[sorted_experts]
    # Non-local pairs are written to one spare slot past the end, dropped below.
    dump = num_blocks * BLOCK_M
    rows = torch.where(sorted_experts < num_experts, padded_start[sorted_experts] + rank, dump)
    pair_ids = torch.full((dump + 1,), num_pairs, dtype=torch.int32, device=device)
    pair_ids[rows] = order.to(torch.int32)
    pair_ids = pair_ids[:dump]
    block_rows = torch.arange(num_blocks, device=device) * BLOCK_M
    padded_end = torch.cumsum(padded[:num_experts], 0)
    block_expert = torch.searchsorted(padded_end, block_rows, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return pair_ids, block_expert


@torch.library.custom_op("auto_deploy::triton_moe_fused", mutates_args=())
def triton_moe_fused(
    hidden_states: Tensor,
    selected_experts: Tensor,
    routing_weights: Tensor,
    gate_up_weight: Tensor,
    down_weight: Tensor,
    activation: str = "silu",
) -> Tensor:
    """``torch_moe`` in two grouped Triton GEMMs (see the module docstring)."""
    check_moe_args(
        "triton_moe_fused",
        hidden_states,
        selected_experts,
        routing_weights,
        gate_up_weight,
        down_weight,
        activation,
    )
    reason = triton_moe_input_problem(
        hidden_states, activation, is_gated(gate_up_weight, down_weight)
    )
    if reason is not None:
        raise ValueError(f"triton_moe_fused does not support {reason}; use torch_moe.")
    tokens, hidden = hidden_states.shape
    num_experts, inter = gate_up_weight.shape[0], gate_up_weight.shape[1] // 2
    top_k = selected_experts.shape[1]
    num_pairs = tokens * top_k
    if num_pairs == 0:
        return hidden_states.new_zeros(hidden_states.shape)
    x = hidden_states.contiguous()
    gate_up, down = gate_up_weight.contiguous(), down_weight.contiguous()
    pair_ids, block_expert = sort_by_expert(selected_experts, num_experts)
    num_blocks = block_expert.shape[0]
    intermediate = x.new_empty(num_pairs, inter)
    gate_up_act_kernel[(num_blocks, -(-inter // BLOCK_N)), x.device](
        x,
        gate_up,
        pair_ids,
        block_expert,
        intermediate,
        num_pairs,
        top_k,
        hidden,
        inter,
        ACTIVATION=TRITON_ACTIVATIONS[activation],
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
    )
    # Zeros: the rows of pairs for no local expert (expert parallelism) are never written.
    pair_out = x.new_zeros(num_pairs, hidden)
    routing = routing_weights.reshape(-1).to(torch.float32).contiguous()
    down_weighted_kernel[(num_blocks, -(-hidden // BLOCK_N)), x.device](
        intermediate,
        down,
        routing,
        pair_ids,
        block_expert,
        pair_out,
        num_pairs,
        hidden,
        inter,
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
    )
    return pair_out.view(tokens, top_k, hidden).sum(dim=1, dtype=torch.float32).to(x.dtype)


@triton_moe_fused.register_fake
def _triton_moe_fused_fake(
    hidden_states, selected_experts, routing_weights, gate_up_weight, down_weight, activation="silu"
):
    return hidden_states.new_empty(hidden_states.shape)
