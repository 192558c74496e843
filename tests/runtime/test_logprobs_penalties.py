"""Penalties and log-probabilities against Hugging Face on a tiny fp32 Llama checkpoint.

- repetition_penalty: the same greedy tokens as HF ``generate(repetition_penalty=...)`` (its
  ``RepetitionPenaltyLogitsProcessor``);
- presence / frequency penalties: the same greedy tokens as HF ``generate`` with a logits
  processor written from OpenAI's formula;
- logprobs / prompt_logprobs: ``log_softmax`` of HF's logits at every position, within 1e-4,
  with the top-n alternatives; prompt_logprobs survive chunked prefill.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import save_tiny
from transformers import LogitsProcessor, LogitsProcessorList

from autodeploy import LLM, SamplingParams

PROMPTS = [[5, 9, 33, 17, 80, 12, 40, 41, 42], [7, 7, 7, 100, 200, 3]]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    hf = save_tiny(path, "llama")
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    # max_num_tokens 16 < the longer prompt + chunk: prompts are prefilled in chunks.
    llm = LLM(
        model=str(path),
        device="cpu",
        attn_backend="torch",
        max_seq_len=64,
        max_batch_size=4,
        max_num_tokens=64,
        kv_cache_config={"tokens_per_block": 4, "max_tokens": 512},
    )
    yield hf, llm
    llm.shutdown()


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence / frequency penalties over the generated tokens (reference)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        counts = torch.zeros_like(scores)
        output = input_ids[:, self.prompt_len :]
        counts.scatter_add_(1, output, torch.ones_like(output, dtype=scores.dtype))
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


def hf_generate(hf, prompt, **kwargs):
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            **kwargs,
        )
    return out[0, len(prompt) :].tolist()


def greedy(**kwargs) -> SamplingParams:
    return SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, **kwargs)


def test_repetition_penalty_matches_hf(models):
    hf, llm = models
    outputs = llm.generate(PROMPTS, greedy(repetition_penalty=1.8))
    plain = llm.generate(PROMPTS, greedy())
    for prompt, output in zip(PROMPTS, outputs):
        assert output.outputs[0].token_ids == hf_generate(hf, prompt, repetition_penalty=1.8)
    assert [o.outputs[0].token_ids for o in outputs] != [o.outputs[0].token_ids for o in plain]


@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.0, 2.0), (-0.5, 1.0)])
def test_presence_and_frequency_penalties_match_reference(models, presence, frequency):
    hf, llm = models
    outputs = llm.generate(PROMPTS, greedy(presence_penalty=presence, frequency_penalty=frequency))
    for prompt, output in zip(PROMPTS, outputs):
        processor = LogitsProcessorList([OpenAIPenalties(len(prompt), presence, frequency)])
        assert output.outputs[0].token_ids == hf_generate(hf, prompt, logits_processor=processor)


def test_logprobs_and_prompt_logprobs_match_hf(models):
    hf, llm = models
    outputs = llm.generate(PROMPTS, greedy(logprobs=3, prompt_logprobs=2))
    for prompt, output in zip(PROMPTS, outputs):
        completion = output.outputs[0]
        sequence = prompt + completion.token_ids
        with torch.no_grad():
            logits = hf(torch.tensor([sequence])).logits[0]  # [T, V]
        reference = torch.log_softmax(logits.float(), dim=-1)
        # Prompt: entry p predicts prompt token p from position p - 1; the first has none.
        assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(prompt)
        for position in range(1, len(prompt)):
            entry = output.prompt_logprobs[position]
            _check_entry(entry, reference[position - 1], prompt[position], top_n=2)
        assert len(completion.logprobs) == NEW_TOKENS
        for step, token in enumerate(completion.token_ids):
            row = reference[len(prompt) + step - 1]
            _check_entry(completion.logprobs[step], row, token, top_n=3)
            assert token == int(row.argmax())  # greedy: the chosen token is the top one


def test_logprobs_absent_unless_asked(models):
    _, llm = models
    (output,) = llm.generate([PROMPTS[0]], greedy())
    assert output.prompt_logprobs is None and output.outputs[0].logprobs is None


def test_prompt_logprobs_of_a_token_only_request(models):
    hf, llm = models
    (output,) = llm.generate([PROMPTS[1]], SamplingParams(max_tokens=1, prompt_logprobs=0))
    with torch.no_grad():
        logits = hf(torch.tensor([PROMPTS[1]])).logits[0]
    reference = torch.log_softmax(logits, dim=-1)
    for position in range(1, len(PROMPTS[1])):
        entry = output.prompt_logprobs[position]
        assert list(entry) == [PROMPTS[1][position]]  # top 0: the actual token only
        expected = float(reference[position - 1, PROMPTS[1][position]])
        assert entry[PROMPTS[1][position]] == pytest.approx(expected, abs=1e-4)


def _check_entry(entry: dict[int, float], reference_row: torch.Tensor, token: int, top_n: int):
    top_values, top_ids = reference_row.topk(top_n)
    assert set(top_ids.tolist()) | {token} == set(entry)
    for token_id, value in entry.items():
        assert value == pytest.approx(float(reference_row[token_id]), abs=1e-4)
    assert max(entry.values()) == pytest.approx(float(top_values[0]), abs=1e-4)


@pytest.mark.parametrize(
    "field, value",
    [
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("repetition_penalty", 0),
        ("logprobs", 21),
        ("prompt_logprobs", -1),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}="):
        SamplingParams(**{field: value})


def test_prompt_logprobs_across_prefill_chunks(models):
    hf, llm = models
    generator = torch.Generator().manual_seed(3)
    # Three 30-token prompts against a 64-token step budget: the third starts as a 4-token
    # chunk in the first step and finishes its prefill in the next.
    prompts = [torch.randint(3, 256, (30,), generator=generator).tolist() for _ in range(3)]
    outputs = llm.generate(prompts, SamplingParams(max_tokens=2, prompt_logprobs=1))
    for prompt, output in zip(prompts, outputs):
        with torch.no_grad():
            reference = torch.log_softmax(hf(torch.tensor([prompt])).logits[0], dim=-1)
        for position in range(1, len(prompt)):
            _check_entry(
                output.prompt_logprobs[position], reference[position - 1], prompt[position], top_n=1
            )
