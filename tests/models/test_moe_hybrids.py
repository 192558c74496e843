"""Mamba-2 hybrids with mixture-of-experts layers (fp32, CPU, one rank).

GraniteMoeHybrid with experts (the granite-4.0-h-tiny/small layout: a Mamba layer and an
attention layer, each followed by routed gated experts plus a shared MLP): one ``torch_moe`` per
layer next to the mixer's ``torch_ssm`` and the attention; greedy tokens equal Hugging Face's
(a batch, then chunked prefill) and each cached step's logits are within 1e-4 of HF's full
forward. Nemotron-H with ``moe`` layers (the Nemotron-3-Nano layout) has ungated relu^2 experts,
which ``torch_moe`` (gated experts only) cannot express: the build fails naming the module and
what is missing.
"""

from __future__ import annotations

import pytest
import torch
from test_canonical_architectures import build
from test_greedy_parity import PAGE_SIZE, hf_greedy, llm_settings, make_prompts
from tiny_models import save_tiny

from autodeploy import LLM, SamplingParams
from autodeploy.transforms.graph_utils import count_ops
from autodeploy.utils.errors import ExportError

ad = torch.ops.auto_deploy
NEW_TOKENS = 8  # crosses a chunk boundary of the scan (chunk 8)
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def granite(tmp_path_factory):
    """(LLM on the torch backends, HF model, HF greedy tokens per prompt)."""
    path = tmp_path_factory.mktemp("granitemoehybrid_moe")
    model = save_tiny(path, "granitemoehybrid_moe")
    expected = [hf_greedy(model, p, NEW_TOKENS) for p in make_prompts()]
    llm = LLM(model=str(path), **{**llm_settings("torch"), "max_batch_size": 2})
    yield llm, model, expected
    llm.shutdown()


def _graph_ops(llm: LLM) -> dict[str, int]:
    """Canonical / cached op counts of the built graph, by family."""
    targets = [str(n.target) for n in llm.model.graph.nodes if n.op == "call_function"]
    return {
        family: sum(family in target for target in targets)
        for family in ("moe", "ssm", "causal_conv", "attention")
    }


def test_granite_moe_hybrid_has_one_moe_op_per_layer(granite):
    llm, _, _ = granite
    ops = _graph_ops(llm)
    assert ops["moe"] == 2  # both decoder layers (mamba and attention) carry experts
    assert ops["ssm"] == 1 and ops["causal_conv"] == 1  # layer 0's mixer (cached ops)
    assert ops["attention"] == 1  # layer 1
    moe_layers = [
        str(n.meta.get("nn_module_stack", ""))
        for n in llm.model.graph.nodes
        if n.op == "call_function" and "moe" in str(n.target)
    ]
    assert "layers.0" in moe_layers[0] and "layers.1" in moe_layers[1]


def test_granite_moe_hybrid_greedy_tokens_match_hugging_face(granite):
    """Three prompts on two state slots (the third waits), then 8-token steps: the longer
    prompts are prefilled in chunks next to the shorter ones' decodes."""
    llm, _, expected = granite
    prompts = make_prompts()
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)] == expected
    scheduler = llm.engine.scheduler  # the driver thread is idle between generate calls
    scheduler.max_num_tokens = 8
    try:
        outputs = llm.generate(prompts, GREEDY)
    finally:
        scheduler.max_num_tokens = llm.cm.info.max_num_tokens
    assert [o.outputs[0].token_ids for o in outputs] == expected


def test_granite_moe_hybrid_cached_logits_match_hugging_face(granite):
    """Prefill, then decode step by step: every step's logits within 1e-4 of HF's forward."""
    llm, model, expected = granite
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


def test_nemotron_h_ungated_experts_fail_naming_what_is_missing(tmp_path):
    """The mixer and attention layers would export; the relu^2 experts (up -> act -> down, no
    gate projection) are not a torch_moe and must not be dropped or approximated."""
    save_tiny(tmp_path, "nemotron_h_moe")
    with pytest.raises(ExportError) as raised:
        LLM(model=str(tmp_path), **llm_settings("torch"))
    message = str(raised.value)
    assert "model.layers.1.mixer.experts (NemotronHExperts)" in message
    assert "an ungated expert MLP" in message and "ReLUSquaredActivation" in message


def test_granite_moe_hybrid_exports_canonical_ops_equal_to_hugging_face(tmp_path_factory):
    """Before any cache: one torch_moe per decoder layer, the mixer's canonical ops, and the
    graph's logits equal HF's (two sequences of 19 tokens)."""
    model, gm = build(tmp_path_factory, "granitemoehybrid_moe")
    assert count_ops(gm, ad.torch_moe) == 2
    assert count_ops(gm, ad.torch_ssm) == count_ops(gm, ad.torch_causal_conv1d) == 1
    assert count_ops(gm, ad.torch_attention) == 1
    ids = torch.randint(3, 256, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = gm(input_ids=ids, position_ids=torch.arange(19).expand(2, 19))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
