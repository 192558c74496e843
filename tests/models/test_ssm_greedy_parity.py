"""Mamba-2 and hybrid models: ``LLM(...).generate`` returns exactly Hugging Face's greedy tokens.

Tiny fp32 checkpoints (``save_pretrained``) of Mamba2 (pure SSM), Nemotron-H (Mamba + attention +
MLP layers) and Bamba (Mamba + attention decoder layers); SSM chunk size 8 so prompts span
several chunks; ``max_batch_size=2`` so a third request waits for a state slot and reuses the
slot of a finished one. Covered: one prompt at a time, a mixed-length batch, a request joining
while another decodes, chunked prefill (8-token steps), logits of the cached model against HF's
full forward, and aborts / errors mid-generation leaving every state slot and KV page free.
"""

from __future__ import annotations

import pytest
import torch
from ssm_helpers import SSM_NEW_TOKENS as NEW_TOKENS
from test_greedy_parity import generate_staggered, make_prompts

from autodeploy import LLM, SamplingParams

ARCHS = ["mamba2", "nemotron_h", "bamba"]
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)


def assert_all_free(llm: LLM) -> None:
    scheduler = llm.engine.scheduler
    assert not scheduler.running and not scheduler.waiting
    assert scheduler.slots.num_free == scheduler.slots.num_slots
    assert scheduler.block_manager.num_unreserved_pages == scheduler.block_manager.num_usable_pages


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_and_single_prompts_match_hugging_face(arch, built):
    """A batch of 3 prompts on 2 slots (the third waits, then reuses a slot), then the longest
    prompt alone."""
    llm, _, expected = built(arch)
    prompts = make_prompts()
    outputs = llm.generate(prompts, GREEDY)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert llm.generate([prompts[2]], GREEDY)[0].outputs[0].token_ids == expected[2]
    assert_all_free(llm)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_request_joins_while_another_decodes(arch, built):
    """The 13-token prompt arrives after 3 decode steps of the 22-token one: mixed prefill +
    decode steps."""
    llm, _, expected = built(arch)
    prompts = make_prompts()
    got = generate_staggered(llm.engine, [prompts[2], prompts[1]], GREEDY)
    assert got == [expected[2], expected[1]]
    assert_all_free(llm)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_carries_the_state(arch, built):
    """8-token steps: prompts of 13 and 22 tokens are prefilled over several steps (the SSM and
    conv states carry over between chunks), next to decoding sequences."""
    llm, _, expected = built(arch)
    engine = llm.engine
    engine.scheduler.max_num_tokens = 8
    try:
        got = generate_staggered(engine, make_prompts(), GREEDY, join_after=1)
    finally:
        engine.scheduler.max_num_tokens = engine.cm.info.max_num_tokens
    assert got == expected


@pytest.mark.parametrize("arch", ["mamba2", "nemotron_h"])
def test_cached_logits_match_full_recomputation(arch, built):
    """Prefill then decode step by step in slot 1: every step's logits equal HF's full forward
    over the sequence so far (fp32, 1e-4)."""
    llm, model, expected = built(arch)
    prompt = make_prompts()[1]
    sequence = prompt + expected[1]
    with torch.no_grad():
        reference = model(torch.tensor([sequence])).logits[0]
    info = llm.cm.info
    pages = list(range(1, 1 + -(-len(sequence) // 4)))
    with torch.inference_mode():
        info.nest_sequences([prompt], [0], [pages], slot_idx=[1])
        logits = info.gather_last_logits(llm.model(**llm.cm.named_args))
        torch.testing.assert_close(logits[0], reference[len(prompt) - 1], atol=1e-4, rtol=1e-4)
        for position in range(len(prompt), len(sequence)):
            info.nest_sequences([[sequence[position]]], [position], [pages], slot_idx=[1])
            logits = info.gather_last_logits(llm.model(**llm.cm.named_args))
            torch.testing.assert_close(logits[0], reference[position], atol=1e-4, rtol=1e-4)


def test_abort_mid_generation_frees_every_slot(built):
    llm, _, expected = built("nemotron_h")
    engine = llm.engine
    requests = [engine.add_request(p, GREEDY) for p in make_prompts()]  # the third waits
    for _ in range(3):
        engine.step()
    assert engine.scheduler.slots.num_free == 0 and len(engine.scheduler.waiting) == 1
    for request in requests:
        engine.abort_request(request.request_id)
    assert_all_free(llm)
    outputs = llm.generate(make_prompts(), GREEDY)  # the slots' old state does not leak in
    assert [o.outputs[0].token_ids for o in outputs] == expected


def test_error_mid_generation_frees_every_slot(built):
    """A forward that fails in the third step fails the requests of that step (the engine goes
    on); the waiting request then runs in a reused slot, and no slot stays taken."""
    llm, _, expected = built("mamba2")
    engine = llm.engine
    model, calls = engine.model, []

    def failing_model(**kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return model(**kwargs)

    engine.model = failing_model
    try:
        outputs = llm.generate(make_prompts(), GREEDY)
    finally:
        engine.model = model
    failed = [o.outputs[0] for o in outputs if o.outputs[0].finish_reason == "error"]
    assert len(failed) == 2 and all("injected failure" in (f.error or "") for f in failed)
    assert outputs[2].outputs[0].token_ids == expected[2]  # admitted after the failure
    assert_all_free(llm)
    assert [o.outputs[0].token_ids for o in llm.generate(make_prompts(), GREEDY)] == expected


def test_pure_mamba_model_has_no_kv_pages(built):
    llm, _, _ = built("mamba2")
    caches = llm.cm.caches
    assert not llm.cm.paged_resources and llm.cm.bytes_per_page == 0
    assert (
        sorted(name.rsplit("_", 1)[0] for name in caches) == ["conv_state"] * 2 + ["ssm_state"] * 2
    )
    slots = llm.cm.info.num_state_slots  # max_batch_size + the spare slot
    assert caches["ssm_state_0"].shape == (slots, 8, 16, 16)  # heads, head_dim, state
    assert caches["ssm_state_0"].dtype == torch.float32
    assert caches["conv_state_0"].shape == (slots, 128 + 2 * 2 * 16, 3)  # channels, kernel - 1
    assert llm.cm.state_bytes == sum(t.numel() * t.element_size() for t in caches.values())
