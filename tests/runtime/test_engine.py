"""Engine + scheduler with a fake paged model: continuous batching, chunked prefill, limits,
stop conditions and capacity rejection, all checked against running each request alone."""

import pytest
from fake_model import FakeCachedSequenceInterface, FakeModel, reference_greedy

from autodeploy.runtime.engine import Engine
from autodeploy.runtime.sampling import SamplingParams
from autodeploy.utils.errors import CapacityError

GREEDY = dict(temperature=0.0, ignore_eos=True)


def make_engine(
    page_size=4, num_pages=64, max_batch_size=4, max_num_tokens=64, max_seq_len=64, **kwargs
):
    cm = FakeCachedSequenceInterface(page_size, num_pages)
    model = FakeModel(cm)
    engine = Engine(
        model,
        cm,
        num_pages=num_pages,
        page_size=page_size,
        max_batch_size=max_batch_size,
        max_num_tokens=max_num_tokens,
        max_seq_len=max_seq_len,
        device="cpu",
        **kwargs,
    )
    return engine, cm, model


def prompt(n, seed=0):
    return [(seed * 31 + 7 * i + 3) % 300 + 10 for i in range(n)]


def run_all(engine):
    outputs = {}
    while engine.has_unfinished():
        for out in engine.step():
            outputs[out.request_id] = out
    return outputs


def test_batch_of_different_lengths_matches_running_alone():
    engine, cm, _ = make_engine()
    prompts = [prompt(n, seed=n) for n in (3, 9, 1, 14)]
    requests = [engine.add_request(p, SamplingParams(max_tokens=10, **GREEDY)) for p in prompts]
    outputs = run_all(engine)
    for request, p in zip(requests, prompts):
        out = outputs[request.request_id]
        assert out.prompt_token_ids == p
        assert out.outputs[0].token_ids == reference_greedy(p, 10)
        assert out.outputs[0].finish_reason == "length"
    assert engine.block_manager.num_unreserved_pages == 63  # every page came back


def test_requests_joining_while_others_decode():
    engine, cm, _ = make_engine(max_batch_size=3)
    params = SamplingParams(max_tokens=12, **GREEDY)
    first = engine.add_request(prompt(6, 1), params)
    outputs = {}
    for step in range(30):
        if step == 3:
            second = engine.add_request(prompt(11, 2), params)
        if step == 5:
            third = engine.add_request(prompt(2, 3), SamplingParams(max_tokens=4, **GREEDY))
            fourth = engine.add_request(prompt(5, 4), params)  # waits: max_batch_size=3
        for out in engine.step():
            outputs[out.request_id] = out
    outputs.update(run_all(engine))
    for request, (n, seed, new) in zip(
        (first, second, third, fourth), ((6, 1, 12), (11, 2, 12), (2, 3, 4), (5, 4, 12))
    ):
        assert outputs[request.request_id].outputs[0].token_ids == reference_greedy(
            prompt(n, seed), new
        )
    # a mixed step really happened: prefill of a new request next to decodes
    assert any(
        len(b["input_ids"]) > 1 and len(b["input_ids"][0]) > 1 and len(b["input_ids"][-1]) == 1
        for b in cm.info.batches
    )
    assert max(len(b["input_ids"]) for b in cm.info.batches) <= 3


def test_max_num_tokens_chunks_prefill_and_results_do_not_change():
    engine, cm, _ = make_engine(max_num_tokens=8, max_seq_len=8 * 4, max_batch_size=4)
    prompts = [prompt(13, 5), prompt(3, 6), prompt(20, 7)]
    requests = [engine.add_request(p, SamplingParams(max_tokens=6, **GREEDY)) for p in prompts]
    outputs = run_all(engine)
    for request, p in zip(requests, prompts):
        assert outputs[request.request_id].outputs[0].token_ids == reference_greedy(p, 6)
    assert max(sum(len(ids) for ids in b["input_ids"]) for b in cm.info.batches) <= 8


def test_cache_pressure_makes_requests_wait_not_fail():
    # 10 usable pages of 4 tokens; each request reserves 4 pages (16 tokens): only 2 at a time.
    engine, cm, _ = make_engine(num_pages=11, max_batch_size=8)
    prompts = [prompt(6, s) for s in range(5)]
    requests = [engine.add_request(p, SamplingParams(max_tokens=10, **GREEDY)) for p in prompts]
    outputs = run_all(engine)
    assert max(len(b["input_ids"]) for b in cm.info.batches) == 2
    for request, p in zip(requests, prompts):
        assert outputs[request.request_id].outputs[0].token_ids == reference_greedy(p, 10)


def test_requests_that_can_never_fit_are_rejected_with_both_sizes():
    engine, _, _ = make_engine(num_pages=9, max_seq_len=40)  # cache: 8 pages x 4 = 32 tokens
    ok = engine.add_request(prompt(5), SamplingParams(max_tokens=5, **GREEDY))
    with pytest.raises(CapacityError) as too_long:
        engine.add_request(prompt(30), SamplingParams(max_tokens=20, **GREEDY))
    assert "50 tokens" in str(too_long.value) and "max_seq_len=40" in str(too_long.value)
    with pytest.raises(CapacityError) as too_big:
        engine.add_request(prompt(30), SamplingParams(max_tokens=6, **GREEDY))
    assert "36 tokens" in str(too_big.value) and "32 tokens" in str(too_big.value)
    with pytest.raises(CapacityError, match="empty"):
        engine.add_request([], SamplingParams())
    with pytest.raises(CapacityError, match="leaves no room"):
        engine.add_request(prompt(40), SamplingParams(max_tokens=None))
    outputs = run_all(engine)
    assert outputs[ok.request_id].outputs[0].token_ids == reference_greedy(prompt(5), 5)


def test_max_tokens_none_generates_up_to_max_seq_len():
    engine, _, _ = make_engine(max_seq_len=20)
    request = engine.add_request(prompt(7), SamplingParams(max_tokens=None, **GREEDY))
    out = run_all(engine)[request.request_id].outputs[0]
    assert len(out.token_ids) == 13 and out.finish_reason == "length"


def test_stop_tokens_eos_and_ignore_eos():
    p = prompt(5)
    expected = reference_greedy(p, 12)
    eos = expected[4]
    first_eos = expected.index(eos)
    engine, _, _ = make_engine(eos_token_ids=[eos])
    stopped = engine.add_request(p, SamplingParams(max_tokens=12, temperature=0.0))
    ignored = engine.add_request(p, SamplingParams(max_tokens=12, **GREEDY))
    by_token = engine.add_request(
        p, SamplingParams(max_tokens=12, stop_token_ids=[expected[2]], **GREEDY)
    )
    late = engine.add_request(
        p, SamplingParams(max_tokens=12, temperature=0.0, min_tokens=first_eos + 2)
    )
    outputs = run_all(engine)
    out = outputs[stopped.request_id].outputs[0]
    assert out.token_ids == expected[: first_eos + 1]
    assert out.finish_reason == "stop" and out.stop_reason == eos
    assert outputs[ignored.request_id].outputs[0].token_ids == expected
    out = outputs[by_token.request_id].outputs[0]
    assert out.token_ids == expected[: expected.index(expected[2]) + 1]
    assert out.finish_reason == "stop"
    late_tokens = outputs[late.request_id].outputs[0].token_ids
    assert len(late_tokens) > first_eos + 1


def test_seeded_sampling_does_not_depend_on_batch_mates():
    params = SamplingParams(max_tokens=12, temperature=1.0, top_k=20, seed=11, ignore_eos=True)
    engine, _, _ = make_engine()
    alone = engine.add_request(prompt(6), params)
    alone_out = run_all(engine)[alone.request_id].outputs[0].token_ids
    engine, _, _ = make_engine()
    engine.add_request(prompt(9, 1), SamplingParams(max_tokens=8, temperature=1.0, ignore_eos=True))
    shared = engine.add_request(prompt(6), params)
    engine.add_request(
        prompt(3, 2), SamplingParams(max_tokens=15, temperature=0.5, seed=2, ignore_eos=True)
    )
    assert run_all(engine)[shared.request_id].outputs[0].token_ids == alone_out
    assert alone_out != reference_greedy(prompt(6), 12)


def test_abort_releases_pages():
    engine, _, _ = make_engine()
    request = engine.add_request(prompt(6), SamplingParams(max_tokens=30, **GREEDY))
    engine.step()
    out = engine.abort_request(request.request_id)
    assert out.outputs[0].finish_reason == "abort" and len(out.outputs[0].token_ids) == 1
    assert not engine.has_unfinished()
    assert engine.block_manager.num_unreserved_pages == 63
