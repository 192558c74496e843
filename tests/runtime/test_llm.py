"""The LLM API on the built-in tiny model: prompt forms, chat, stop strings, errors, lifetime."""

from __future__ import annotations

import re

import pytest

from autodeploy import LLM, SamplingParams
from autodeploy.utils.errors import ConfigError

SETTINGS = dict(
    device="cpu",
    attn_backend="torch",
    max_seq_len=1100,
    max_batch_size=4,
    kv_cache_config={"tokens_per_block": 8, "max_tokens": 1024},
)
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm():
    with LLM(model="builtin:tiny-llama", **SETTINGS) as instance:
        yield instance


def test_prompt_forms_and_output_shape(llm):
    text = "Hello world"
    ids = llm.tokenizer.encode(text)
    single = llm.generate(text, GREEDY)
    assert len(single) == 1 and single[0].prompt == text and single[0].prompt_token_ids == ids
    completion = single[0].outputs[0]
    assert len(completion.token_ids) == 8 and completion.finish_reason == "length"
    assert completion.text == llm.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
    by_ids = llm.generate(ids, GREEDY)
    assert by_ids[0].prompt is None and by_ids[0].outputs[0].token_ids == completion.token_ids
    mixed = llm.generate([ids, "Other prompt", text], GREEDY)
    assert [m.outputs[0].token_ids for m in (mixed[0], mixed[2])] == [completion.token_ids] * 2
    assert mixed[1].prompt == "Other prompt"


def test_per_prompt_sampling_params(llm):
    short = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    outputs = llm.generate(["a", "b"], [short, GREEDY])
    assert [len(o.outputs[0].token_ids) for o in outputs] == [2, 8]
    with pytest.raises(ConfigError, match="1 SamplingParams for 2 prompts"):
        llm.generate(["a", "b"], [short])


def test_chat_applies_the_template(llm):
    messages = [{"role": "user", "content": "Hi there"}]
    expected_prompt = llm.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    (out,) = llm.chat(messages, GREEDY)
    assert out.prompt == expected_prompt
    assert out.prompt_token_ids == llm.tokenizer.encode(expected_prompt, add_special_tokens=False)
    two = llm.chat([messages, [{"role": "user", "content": "Bye"}]], GREEDY)
    assert two[0].outputs[0].token_ids == out.outputs[0].token_ids and len(two) == 2


def test_stop_strings_cut_the_text(llm):
    reference = llm.generate(
        "The sea", SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    )[0].outputs[0]
    text = reference.text
    assert len(text) > 6
    stop = text[3:6]
    out = llm.generate(
        "The sea", SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop])
    )[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[: text.find(stop)]
    assert reference.token_ids[: len(out.token_ids)] == out.token_ids
    assert len(out.token_ids) < len(reference.token_ids)


def test_seeded_sampling_reproducible_through_the_api(llm):
    params = SamplingParams(max_tokens=12, temperature=1.0, top_k=50, seed=3, ignore_eos=True)
    first = llm.generate(["x", "y"], params)
    again = llm.generate(["y", "x"], params)
    assert first[0].outputs[0].token_ids == again[1].outputs[0].token_ids
    assert first[1].outputs[0].token_ids == again[0].outputs[0].token_ids


def test_bad_prompts_are_errors_before_anything_runs(llm):
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        llm.generate([[1, 2, 100000]], GREEDY)
    with pytest.raises(ConfigError, match="a prompt is a string or a list of token ids"):
        llm.generate([3.5], GREEDY)
    with pytest.raises(ConfigError, match="prompts must be"):
        llm.generate(42, GREEDY)
    assert not llm.engine.has_unfinished()


def test_request_larger_than_the_cache_is_rejected_others_finish(llm):
    # The cache holds 1024 tokens, max_seq_len is 1100: rejected before anything runs.
    long_prompt = [5] * 1030
    outputs = llm.generate([[5, 6, 7], long_prompt, [8, 9]], GREEDY)
    assert [len(o.outputs[0].token_ids) for o in (outputs[0], outputs[2])] == [8, 8]
    error = outputs[1].outputs[0].error
    assert outputs[1].outputs[0].finish_reason == "error" and outputs[1].outputs[0].token_ids == []
    assert "1038 tokens" in error and "1024 tokens" in error, error
    assert error.startswith("prompt 1 needs"), error  # the index, not an internal request id


def test_prompt_rules_are_one_rule_naming_the_index(llm):
    # An empty token list used to come back as finish_reason="error" after the run started.
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        llm.generate([[1, 2], []], GREEDY)
    numpy = pytest.importorskip("numpy")
    import torch

    # A list of numpy arrays used to be rejected while a 1-D tensor was accepted.
    from_arrays = llm.generate([numpy.array([5, 6, 7]), numpy.array([8, 9])], GREEDY)
    from_tensor = llm.generate(torch.tensor([5, 6, 7]), GREEDY)
    assert from_arrays[0].outputs[0].token_ids == from_tensor[0].outputs[0].token_ids
    assert len(from_arrays[1].outputs[0].token_ids) == 8
    vocab = llm.factory.vocab_size
    bad_params = [
        (SamplingParams(temperature=float("inf")), "temperature=inf must be finite"),
        (SamplingParams(top_k=vocab + 1), f"top_k={vocab + 1} is larger than the vocabulary"),
        (SamplingParams(stop_token_ids=[vocab]), f"stop_token_ids [{vocab}] are outside"),
    ]
    for params, message in bad_params:
        with pytest.raises(
            ConfigError, match=r"sampling_params for prompt 1: " + re.escape(message)
        ):
            llm.generate([[5], [6]], [GREEDY, params])
    assert not llm.engine.has_unfinished()


def test_shutdown_and_context_manager(monkeypatch):
    """Lifetime logic on a fake build (no model to compile)."""
    from fake_model import FakeCachedSequenceInterface, FakeModel

    from autodeploy.runtime import llm as llm_module
    from autodeploy.runtime.builder import BuildResult

    def fake_build(args):
        cm = FakeCachedSequenceInterface(page_size=4, num_pages=32, max_num_tokens=args.max_seq_len)
        factory = type("Factory", (), {"vocab_size": 384})()
        return BuildResult(args, factory, cm, FakeModel(cm), tokenizer=None)

    monkeypatch.setattr(llm_module, "build_from_args", fake_build)
    with LLM(model="builtin:tiny-llama", max_seq_len=64, device="cpu") as fake:
        out = fake.generate([[1, 2, 3]], GREEDY)[0].outputs[0]
        assert len(out.token_ids) == 8 and out.text == ""  # no tokenizer: no text
        with pytest.raises(ConfigError, match="has no tokenizer"):
            fake.generate("text needs a tokenizer", GREEDY)
        with pytest.raises(ConfigError, match="no chat template"):
            fake.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(RuntimeError, match="shut down"):
        fake.generate([[1, 2]], GREEDY)
    fake.shutdown()  # idempotent
    assert "shut down" in repr(fake)


def test_world_size_above_one_is_not_implemented_yet():
    with pytest.raises(ConfigError, match="world_size=2.*not implemented"):
        LLM(model="builtin:tiny-llama", world_size=2, device="cpu")
