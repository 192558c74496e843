"""Greedy parity: ``LLM(...).generate`` returns exactly Hugging Face's ``generate`` tokens.

Tiny fp32 checkpoints (``save_pretrained``) of six architectures, a batch of prompts of different
lengths that span several KV pages (page size 4), 16 new tokens, ``ignore_eos``. The ``torch``
attention backend for every architecture; the ``triton`` backend (Triton interpreter on CPU) for
one of them. Also: continuous batching with a real model, and the capacity error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny

from autodeploy import LLM, SamplingParams

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3"]
TRITON_ARCH = "gemma2"  # GQA, sliding window and logit soft-cap
PROMPT_LENGTHS = [5, 13, 22]  # 2, 4 and 6 pages of 4 tokens before decoding
NEW_TOKENS = 16
PAGE_SIZE = 4


def llm_settings(backend: str) -> dict:
    return dict(
        device="cpu",
        attn_backend=backend,
        max_seq_len=64,
        max_batch_size=4,
        kv_cache_config={"tokens_per_block": PAGE_SIZE, "max_tokens": 512},
    )


def make_prompts(vocab: int = 256) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def hf_greedy(model: torch.nn.Module, prompt: list[int], new_tokens: int = NEW_TOKENS):
    model.generation_config.eos_token_id = None  # ignore_eos
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> (checkpoint dir, HF reference tokens per prompt)."""
    found = {}
    prompts = make_prompts()
    for arch in ARCHS:
        path = tmp_path_factory.mktemp(arch)
        model = save_tiny(path, arch)
        found[arch] = (path, [hf_greedy(model, p) for p in prompts])
        HF_MODELS[arch] = model
    return found


HF_MODELS: dict[str, torch.nn.Module] = {}


GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def torch_llms(checkpoints):
    """arch -> LLM on the torch backend, built once for the module."""
    built = {}
    yield lambda arch: built.setdefault(
        arch, LLM(model=str(checkpoints[arch][0]), **llm_settings("torch"))
    )
    for llm in built.values():
        llm.shutdown()


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_match_hugging_face_torch_backend(arch, checkpoints, torch_llms):
    _, expected = checkpoints[arch]
    prompts = make_prompts()
    outputs = torch_llms(arch).generate(prompts, GREEDY)
    assert [o.prompt_token_ids for o in outputs] == prompts
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert all(o.outputs[0].finish_reason == "length" for o in outputs)


def generate_staggered(engine, prompts, params, join_after=3):
    """The first prompts start together; the last joins after ``join_after`` steps (so that
    step is a mixed prefill + decode batch). Returns the token ids in prompt order."""
    outputs = {}
    requests = [engine.add_request(p, params) for p in prompts[:-1]]
    for _ in range(join_after):
        outputs.update({o.request_id: o for o in engine.step()})
    requests.append(engine.add_request(prompts[-1], params))
    while engine.has_unfinished():
        outputs.update({o.request_id: o for o in engine.step()})
    return [outputs[r.request_id].outputs[0].token_ids for r in requests]


def test_continuous_batching_with_a_real_model(checkpoints, torch_llms):
    """A request that joins while others decode gets the same tokens as when run alone."""
    _, expected = checkpoints["llama"]
    prompts = make_prompts()
    order = [2, 0, 1]  # the longest starts first; the 13-token prompt joins mid-decode
    got = generate_staggered(torch_llms("llama").engine, [prompts[i] for i in order], GREEDY)
    assert got == [expected[i] for i in order]


def test_chunked_prefill_with_a_real_model(checkpoints, torch_llms):
    """With a step budget of 8 tokens, prompts are prefilled in chunks (input_pos > 0) next
    to decoding sequences; the tokens do not change."""
    _, expected = checkpoints["llama"]
    engine = torch_llms("llama").engine
    engine.scheduler.max_num_tokens = 8
    try:
        got = generate_staggered(engine, make_prompts(), GREEDY, join_after=1)
    finally:
        engine.scheduler.max_num_tokens = engine.cm.info.max_num_tokens
    assert got == expected


TRITON_SCRIPT = """
import json, sys
from autodeploy import LLM
from test_greedy_parity import GREEDY, generate_staggered
settings, prompts, path = json.loads(sys.argv[1])
with LLM(model=path, **settings) as llm:
    print("RESULTS=" + json.dumps(generate_staggered(llm.engine, prompts, GREEDY)))
"""


def test_greedy_tokens_match_hugging_face_triton_backend(checkpoints):
    """The Triton backend (interpreter on CPU: ~1 s per step, so one architecture, gemma2:
    GQA, sliding window, logit soft-cap) with a request joining mid-decode."""
    pytest.importorskip("triton")
    from autodeploy.custom_ops.attention.descriptor import AttentionRegistry

    if not AttentionRegistry.has("triton"):
        pytest.skip("the triton attention backend is not registered")
    from autodeploy.custom_ops.attention.triton_launch import cpu_interpreter_problem

    path, expected = checkpoints[TRITON_ARCH]
    prompts = make_prompts()
    if torch.cuda.is_available() or cpu_interpreter_problem() is None:
        with LLM(model=str(path), **llm_settings("triton")) as llm:
            got = generate_staggered(llm.engine, prompts, GREEDY)
    else:  # triton was imported in compiled mode: run in a fresh interpreter-mode process
        env = {**os.environ, "TRITON_INTERPRET": "1", "AUTODEPLOY_LOG_LEVEL": "WARNING"}
        env["PYTHONPATH"] = os.pathsep.join(
            [
                str(Path(__file__).parent),
                str(Path(__file__).parents[1]),
                str(Path(__file__).parents[2]),
                env.get("PYTHONPATH", ""),
            ]
        )
        argv = json.dumps([llm_settings("triton"), prompts, str(path)])
        proc = subprocess.run(
            [sys.executable, "-c", TRITON_SCRIPT, argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS="))
        got = json.loads(line[len("RESULTS=") :])
    assert got == expected


def test_capacity_rejection_names_both_sizes_and_others_finish(checkpoints, torch_llms):
    _, expected = checkpoints["llama"]
    prompts = make_prompts()
    too_long = list(range(3, 63))  # 60 + 16 tokens > max_seq_len 64
    outputs = torch_llms("llama").generate([prompts[0], too_long, prompts[1]], GREEDY)
    assert outputs[0].outputs[0].token_ids == expected[0]
    assert outputs[2].outputs[0].token_ids == expected[1]
    rejected = outputs[1].outputs[0]
    assert rejected.finish_reason == "error" and rejected.token_ids == []
    assert "76 tokens" in rejected.error and "max_seq_len=64" in rejected.error


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_cached_logits_match_full_recomputation(arch, checkpoints, torch_llms):
    """The last prefill token's logits and then each decode step's logits of the default
    pipeline equal Hugging Face's full forward over the whole sequence (fp32: within 1e-4).
    (Every prefill token is compared in tests/transforms/test_insert_cached_attention.py.)"""
    _, expected = checkpoints[arch]
    prompt = make_prompts()[2]
    sequence = prompt + expected[2]
    with torch.no_grad():
        reference = HF_MODELS[arch](torch.tensor([sequence])).logits[0]  # [len, vocab]
    llm = torch_llms(arch)
    assert not llm.engine.has_unfinished()  # the pages below are free
    info = llm.cm.info
    pages = list(range(1, 1 + -(-len(sequence) // PAGE_SIZE)))
    with torch.inference_mode():
        info.nest_sequences([prompt], [0], [pages])
        # The default pipeline computes logits only for the sampled (last) prompt token.
        logits = info.gather_last_logits(llm.model(**llm.cm.named_args))
        torch.testing.assert_close(logits[0], reference[len(prompt) - 1], atol=1e-4, rtol=1e-4)
        for position in range(len(prompt), len(sequence)):
            info.nest_sequences([[sequence[position]]], [position], [pages])
            logits = info.gather_last_logits(llm.model(**llm.cm.named_args))
            torch.testing.assert_close(logits[0], reference[position], atol=1e-4, rtol=1e-4)
