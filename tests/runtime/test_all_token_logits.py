"""The model without its logit gather (for prompt_logprobs): structure, sharing, numbers."""

from __future__ import annotations

import pytest
import torch

from autodeploy import LLM
from autodeploy.runtime.all_token_logits import find_graph_module, without_logit_gather

GATHER = torch.ops.auto_deploy.torch_gather_last_tokens.default


def _count_gathers(gm) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is GATHER)


@pytest.fixture(scope="module")
def llm():
    with LLM(
        model="builtin:tiny-llama",
        device="cpu",
        attn_backend="torch",
        max_seq_len=64,
        max_batch_size=2,
        kv_cache_config={"tokens_per_block": 8, "max_tokens": 256},
    ) as instance:
        yield instance


def test_copy_drops_the_gather_and_shares_the_weights(llm):
    gm = find_graph_module(llm.model)
    assert _count_gathers(gm) == 1
    full = without_logit_gather(llm.model)
    assert _count_gathers(full) == 0 and _count_gathers(gm) == 1  # the original is untouched
    weights = {p.data_ptr() for p in gm.parameters()}
    assert weights and weights == {p.data_ptr() for p in full.parameters()}
    assert without_logit_gather(full) is full  # nothing left to bypass


def test_per_token_logits_agree_with_the_gathered_ones(llm):
    info = llm.cm.info
    info.nest_sequences([[5, 9, 33, 17], [7, 8]], [0, 0], [[1], [2]])
    last = info.gather_last_logits(llm.model(**llm.cm.named_args))  # [2, V]
    full = without_logit_gather(llm.model)(**llm.cm.named_args)  # [1, 6, V]
    assert full.shape[:2] == (1, 6)
    torch.testing.assert_close(full[0, [3, 5]], last, rtol=0, atol=1e-5)


def test_wrapped_models_are_unwrapped(llm):
    gm = find_graph_module(llm.model)

    class Runner(torch.nn.Module):  # a CUDA-graph runner holding a torch.compile wrapper
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model._orig_mod = gm

    assert find_graph_module(Runner()) is gm
    assert find_graph_module(torch.nn.Linear(2, 2)) is None
    assert without_logit_gather(torch.nn.Linear(2, 2)) is None
