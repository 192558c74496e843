"""GPU: captured Triton decode steps use the key-range splits of max_seq_len, and replays are
correct for every context length (built-in tiny Llama, ``torch-cudagraph``).

The graphs are captured on padding rows one page long; the capture phase makes the launcher size
the split count for ``max_seq_len`` instead (``shim/capture_phase.py``). Here, for every decode
batch of 1..8 rows (captured sizes 1, 2, 4, 8; the others padded), each row in turn decodes with
a context of 2 keys (the shortest decode: 1 cached + the new one; most splits empty), a page and
one key, a middle length, and max_seq_len - 1 and max_seq_len keys (every split full). The KV
pages hold random values; the reference is the uncaptured model on the same step (its own split
heuristic, from ``cache_loc``), and the graphs' static outputs are NaN before each replay.
"""

from __future__ import annotations

import pytest
import torch

from autodeploy.compile.backends.cuda_graph_runner import CudaGraphRunner
from autodeploy.config import LlmArgs
from autodeploy.custom_ops.attention.triton_launch import decode_num_splits
from autodeploy.runtime.builder import build_from_args

pytestmark = pytest.mark.gpu

SIZES = [1, 2, 4, 8]
MAX_SEQ_LEN = 512
PAGE = 16
CONTEXTS = [2, PAGE + 1, 100, MAX_SEQ_LEN - 1, MAX_SEQ_LEN]  # keys seen by the decode token
VOCAB, KV_HEADS = 384, 2  # built-in tiny-llama
DECODE_BLOCK_N = {"float32": 32, "bfloat16": 64}  # keys per tile (triton_launch._decode_config)


def build(dtype: str):
    args = LlmArgs(
        model="builtin:tiny-llama",
        device="cuda",
        dtype=dtype,
        attn_backend="triton",
        compile_backend="torch-cudagraph",
        max_seq_len=MAX_SEQ_LEN,
        max_batch_size=max(SIZES),
        cuda_graph_batch_sizes=SIZES,
        kv_cache_config={"tokens_per_block": PAGE, "max_tokens": 2 * max(SIZES) * MAX_SEQ_LEN},
    )
    built = build_from_args(args)
    assert isinstance(built.model, CudaGraphRunner)
    return built.model, built.cm


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_replay_matches_uncaptured_for_contexts_up_to_max_seq_len(dtype, tol):
    runner, cm = build(dtype)
    device = torch.device("cuda")
    for size in SIZES:  # the split count of max_seq_len, several splits at every size
        expected = decode_num_splits(size, KV_HEADS, MAX_SEQ_LEN, DECODE_BLOCK_N[dtype], device)
        assert runner.stats.decode_splits[size] == (expected,) and expected > 1, size

    info = cm.info
    generator = torch.Generator().manual_seed(0)
    pages_per_row = MAX_SEQ_LEN // PAGE
    with torch.inference_mode():
        for rows in range(1, max(SIZES) + 1):
            for shift in range(len(CONTEXTS)):  # every row sees every context length
                contexts = [CONTEXTS[(shift + r) % len(CONTEXTS)] for r in range(rows)]
                pages = [
                    list(range(1 + r * pages_per_row, 1 + r * pages_per_row + -(-n // PAGE)))
                    for r, n in enumerate(contexts)
                ]
                for cache in cm.caches.values():
                    cache.normal_()  # random keys/values at every cached position
                ids = torch.randint(0, VOCAB, (rows,), generator=generator).tolist()
                info.nest_sequences([[t] for t in ids], [n - 1 for n in contexts], pages)
                reference = info.gather_last_logits(runner.model(**cm.named_args)).float().clone()
                for graph in runner.graphs.values():
                    graph.output.fill_(float("nan"))
                replays = runner.stats.num_replays
                got = info.gather_last_logits(runner(**cm.named_args)).float()
                assert runner.stats.num_replays == replays + 1, "the step did not replay"
                torch.testing.assert_close(
                    got,
                    reference,
                    atol=tol,
                    rtol=tol,
                    msg=lambda m, c=contexts: f"contexts {c}: {m}",
                )
    assert sorted(runner.stats.replays) == SIZES
