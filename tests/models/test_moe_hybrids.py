"""Mamba-2 hybrids with mixture-of-experts layers (fp32, CPU, one rank).

GraniteMoeHybrid with experts (the granite-4.0-h-tiny/small layout: a Mamba layer and an
attention layer, each followed by routed gated experts plus a shared MLP) and Nemotron-H with
``moe`` layers (the Nemotron-3-Nano layout: mamba, moe, attention; ungated relu^2 experts with
sigmoid group-limited routing and a shared expert). Each exports one ``torch_moe`` per MoE layer
next to the mixer's ``torch_ssm`` and the attention, with logits equal to HF's before any cache;
built, its greedy tokens equal Hugging Face's (a batch on two state slots, then chunked prefill)
and each cached step's logits are within 1e-4 of HF's full forward.
"""

from __future__ import annotations

import pytest
import torch
from ssm_helpers import SSM_NEW_TOKENS as NEW_TOKENS
from test_canonical_architectures import build
from test_greedy_parity import PAGE_SIZE, make_prompts

from autodeploy import SamplingParams
from autodeploy.transforms.graph_utils import count_ops

ad = torch.ops.auto_deploy
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
# arch -> layers holding experts (from the layer pattern in tiny_models.py)
MOE_LAYERS = {"granitemoehybrid_moe": [0, 1], "nemotron_h_moe": [1]}


@pytest.mark.parametrize("arch", list(MOE_LAYERS))
def test_exports_canonical_ops_equal_to_hugging_face(tmp_path_factory, arch):
    """Before any cache: one torch_moe per MoE layer, the mixer's canonical ops, one attention,
    and the graph's logits equal HF's (two sequences of 19 tokens)."""
    model, gm = build(tmp_path_factory, arch)
    assert count_ops(gm, ad.torch_moe) == len(MOE_LAYERS[arch])
    assert count_ops(gm, ad.torch_ssm) == count_ops(gm, ad.torch_causal_conv1d) == 1
    assert count_ops(gm, ad.torch_attention) == 1
    moe_layers = [
        str(n.meta.get("nn_module_stack", ""))
        for n in gm.graph.nodes
        if n.op == "call_function" and n.target == ad.torch_moe.default
    ]
    for layer, stack in zip(MOE_LAYERS[arch], moe_layers):
        assert f"layers.{layer}." in stack
    ids = torch.randint(3, 256, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = gm(input_ids=ids, position_ids=torch.arange(19).expand(2, 19))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", list(MOE_LAYERS))
def test_greedy_tokens_match_hugging_face(arch, built):
    """Three prompts on two state slots (the third waits), then 8-token steps: the longer
    prompts are prefilled in chunks next to the shorter ones' decodes."""
    llm, _, expected = built(arch)
    prompts = make_prompts()
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)] == expected
    scheduler = llm.engine.scheduler  # the driver thread is idle between generate calls
    scheduler.max_num_tokens = 8
    try:
        outputs = llm.generate(prompts, GREEDY)
    finally:
        scheduler.max_num_tokens = llm.cm.info.max_num_tokens
    assert [o.outputs[0].token_ids for o in outputs] == expected


@pytest.mark.parametrize("arch", list(MOE_LAYERS))
def test_cached_logits_match_hugging_face(arch, built):
    """Prefill, then decode step by step: every step's logits within 1e-4 of HF's forward."""
    llm, model, expected = built(arch)
    targets = [str(n.target) for n in llm.model.graph.nodes if n.op == "call_function"]
    moe_ops = [target for target in targets if "moe" in target]  # compiled: op wrappers
    assert len(moe_ops) == len(MOE_LAYERS[arch])
    assert all("torch_moe_grouped" in target for target in moe_ops)  # fuse_moe's CPU backend
    prompt = make_prompts()[1]
    sequence = prompt + expected[1]
    with torch.no_grad():
        reference = model(torch.tensor([sequence])).logits[0]
    info = llm.cm.info
    pages = list(range(1, 1 + -(-len(sequence) // PAGE_SIZE)))
    with torch.inference_mode():
        info.nest_sequences([prompt], [0], [pages], slot_idx=[1])
        logits = info.gather_last_logits(llm.model(**llm.cm.named_args))
        torch.testing.assert_close(logits[0], reference[len(prompt) - 1], atol=1e-4, rtol=1e-4)
        for position in range(len(prompt), len(sequence)):
            info.nest_sequences([[sequence[position]]], [position], [pages], slot_idx=[1])
            logits = info.gather_last_logits(llm.model(**llm.cm.named_args))
            torch.testing.assert_close(logits[0], reference[position], atol=1e-4, rtol=1e-4)
