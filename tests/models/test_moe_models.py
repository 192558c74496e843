"""Mixture-of-experts models: greedy tokens and logits equal Hugging Face eager (fp32, CPU).

Tiny checkpoints written with ``save_pretrained`` (per-expert tensors on disk, stacked in the
model: the loader converts them) for Mixtral, Qwen2-MoE (shared expert with its sigmoid gate, a
dense layer through ``mlp_only_layers``) and Qwen3-MoE; one prompt at a time and as a
mixed-length batch with chunked prefill. More families (OLMoE, GLM4-MoE, Granite-MoE(-Shared),
Phi-MoE, ...) with a short greedy run each; a top_k=1 model; unsupported MoE blocks and broken
checkpoints fail with errors naming the module or tensor.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from test_greedy_parity import (
    GREEDY,
    PAGE_SIZE,
    hf_greedy,
    llm_settings,
    make_prompts,
)
from tiny_models import save_tiny, tiny_config

from autodeploy import LLM, SamplingParams
from autodeploy.utils.errors import ConfigError, ExportError

MOE_ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe"]


@pytest.fixture(scope="module")
def moe_checkpoints(tmp_path_factory):
    """arch -> (checkpoint dir, HF model, HF greedy tokens per prompt)."""
    found = {}
    for arch in MOE_ARCHS:
        path = tmp_path_factory.mktemp(arch)
        model = save_tiny(path, arch)
        found[arch] = (path, model, [hf_greedy(model, p) for p in make_prompts()])
    return found


@pytest.fixture(scope="module")
def moe_llms(moe_checkpoints):
    built = {}
    yield lambda arch: built.setdefault(
        arch, LLM(model=str(moe_checkpoints[arch][0]), **llm_settings("torch"))
    )
    for llm in built.values():
        llm.shutdown()


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_moe_greedy_tokens_match_hugging_face(arch, moe_checkpoints, moe_llms):
    """One prompt at a time, then all prompts as one mixed-length batch with a step budget of
    8 tokens: the longer prompts are prefilled in chunks next to the shorter ones' decodes."""
    _, _, expected = moe_checkpoints[arch]
    llm = moe_llms(arch)
    prompts = make_prompts()
    for prompt, tokens in zip(prompts, expected):
        assert llm.generate([prompt], GREEDY)[0].outputs[0].token_ids == tokens
    scheduler = llm.engine.scheduler  # the driver thread is idle between generate calls
    scheduler.max_num_tokens = 8
    try:
        outputs = llm.generate(prompts, GREEDY)  # 13 and 22 tokens > 8: chunked prefill
    finally:
        scheduler.max_num_tokens = llm.cm.info.max_num_tokens
    assert [o.outputs[0].token_ids for o in outputs] == expected


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_moe_logits_match_hugging_face(arch, moe_checkpoints, moe_llms):
    """The prefill's last-token logits and each decode step's logits within 1e-4 of HF."""
    _, model, expected = moe_checkpoints[arch]
    prompt = make_prompts()[1]
    sequence = prompt + expected[1]
    with torch.no_grad():
        reference = model(torch.tensor([sequence])).logits[0]
    llm = moe_llms(arch)
    info = llm.cm.info
    pages = list(range(1, 1 + -(-len(sequence) // PAGE_SIZE)))
    with torch.inference_mode():
        info.nest_sequences([prompt], [0], [pages])
        logits = info.gather_last_logits(llm.model(**llm.cm.named_args))
        torch.testing.assert_close(logits[0], reference[len(prompt) - 1], atol=1e-4, rtol=1e-4)
        for position in range(len(prompt), len(sequence)):
            info.nest_sequences([[sequence[position]]], [position], [pages])
            logits = info.gather_last_logits(llm.model(**llm.cm.named_args))
            torch.testing.assert_close(logits[0], reference[position], atol=1e-4, rtol=1e-4)


def test_moe_graph_has_one_moe_op_per_moe_layer(moe_llms):
    """Qwen2-MoE: layer 0 is sparse, layer 1 dense (mlp_only_layers): exactly one MoE op."""
    moe_ops = [
        n
        for n in moe_llms("qwen2_moe").model.graph.nodes
        if n.op == "call_function" and "moe" in str(n.target)
    ]
    assert len(moe_ops) == 1
    assert "layers.0" in str(moe_ops[0].meta.get("nn_module_stack", ""))


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_export_with_dynamic_batch_and_sequence_dims(arch, moe_checkpoints):
    """One export, then two batch/sequence shapes: logits equal HF's; one MoE op per sparse
    layer; the export patch leaves transformers' experts dispatch as it found it."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    from autodeploy.export import set_graph_device
    from autodeploy.models import ModelFactoryRegistry
    from autodeploy.transforms import InferenceOptimizer
    from autodeploy.transforms.graph_utils import count_ops

    path, hf_model, _ = moe_checkpoints[arch]
    factory = ModelFactoryRegistry.get("AutoModelForCausalLM")(str(path))
    pipeline = {"build_model": {"stage": "factory"}, "export_to_gm": {"stage": "export"}}
    gm = InferenceOptimizer(factory, pipeline)(None)
    factory.load_or_random_init(gm, "cpu")
    set_graph_device(gm, "cpu")
    assert "get_interface" not in vars(ALL_EXPERTS_FUNCTIONS)  # the patch was reverted
    sparse_layers = 1 if arch == "qwen2_moe" else 2
    assert count_ops(gm, torch.ops.auto_deploy.torch_moe) == sparse_layers
    for batch, seq in ((2, 5), (3, 11)):
        input_ids = torch.randint(0, 256, (batch, seq))
        position_ids = torch.arange(seq).repeat(batch, 1)
        with torch.no_grad():
            expected = hf_model(input_ids=input_ids, position_ids=position_ids).logits
            got = gm(input_ids=input_ids, position_ids=position_ids)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


SHORT = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
_EXPERTS = dict(num_experts_per_tok=2, moe_intermediate_size=32)
# Other transformers MoE families with the same block shape (config class, settings): one per
# routing style (softmax top-k without renormalization, DeepSeek-style sigmoid + bias with a
# dense first layer, top-k-then-softmax with a shared expert, Phi-MoE's sparsemixer,
# DeepSeek-V3's group-limited top-k).
FAMILIES = {
    "olmoe": ("OlmoeConfig", dict(num_experts=4, num_experts_per_tok=2)),
    "glm4_moe": (
        "Glm4MoeConfig",
        dict(
            n_routed_experts=4,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            head_dim=16,
            **_EXPERTS,
        ),
    ),
    "granitemoeshared": (
        "GraniteMoeSharedConfig",
        dict(num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=48),
    ),
    "phimoe": ("PhimoeConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
    # Group-limited top-k (2 groups, 1 picked). value head dim = key head dim: MLA's cached
    # attention with a different value dim is not built yet.
    "deepseek_v3": (
        "DeepseekV3Config",
        dict(
            n_routed_experts=4,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=2,
            topk_group=1,
            q_lora_rank=None,
            kv_lora_rank=16,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=24,
            num_key_value_heads=4,
            **_EXPERTS,
        ),
    ),
}
_TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def _save_family(path, family: str) -> torch.nn.Module:
    class_name, settings = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, class_name)(**{**_TINY, **settings})
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.eval().save_pretrained(path)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_more_moe_families_match_hugging_face(family, tmp_path):
    model = _save_family(tmp_path, family)
    prompts = make_prompts()[1:2]
    expected = [hf_greedy(model, p, SHORT.max_tokens) for p in prompts]
    with LLM(model=str(tmp_path), **llm_settings("torch")) as llm:
        outputs = llm.generate(prompts, SHORT)
    assert [o.outputs[0].token_ids for o in outputs] == expected


def test_top_k_1_model(tmp_path):
    model = save_tiny(tmp_path, "mixtral", num_experts_per_tok=1)
    prompts = make_prompts()[:1]
    expected = [hf_greedy(model, p, SHORT.max_tokens) for p in prompts]
    with LLM(model=str(tmp_path), **llm_settings("torch")) as llm:
        assert [o.outputs[0].token_ids for o in llm.generate(prompts, SHORT)] == expected


def _rewrite_checkpoint(path, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_missing_expert_tensor_is_named(tmp_path):
    save_tiny(tmp_path, "qwen3_moe")
    missing = "model.layers.1.mlp.experts.2.up_proj.weight"
    _rewrite_checkpoint(tmp_path, lambda t: t.pop(missing))
    with pytest.raises(ConfigError, match="missing 1 expert tensor") as info:
        LLM(model=str(tmp_path), **llm_settings("torch"))
    assert missing in str(info.value)


def test_wrong_shaped_expert_tensor_is_named(tmp_path):
    save_tiny(tmp_path, "mixtral")
    key = "model.layers.0.block_sparse_moe.experts.1.w3.weight"

    def shrink(tensors):
        tensors[key] = tensors[key][:-1]

    _rewrite_checkpoint(tmp_path, shrink)
    with pytest.raises(ConfigError, match="has shape") as info:
        LLM(model=str(tmp_path), **llm_settings("torch"))
    assert key in str(info.value)


def test_unsupported_moe_block_names_the_module(tmp_path):
    """JetMoE's experts are not transformers' pluggable stacked experts."""
    config = transformers.JetMoeConfig(**{**_TINY, "num_local_experts": 4})
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(ExportError, match=r"JetMoeMoE.*pluggable experts"):
        LLM(model=str(tmp_path), **llm_settings("torch"))


def test_experts_with_biases_are_rejected_with_the_reason():
    from autodeploy.models.hf_moe import unsupported_features

    model = transformers.AutoModelForCausalLM.from_config(tiny_config("mixtral"))
    experts = model.model.layers[0].mlp.experts
    experts.has_bias = True
    assert unsupported_features(experts) == ["expert biases"]


def test_coverage_expects_one_moe_op_per_sparse_layer(moe_llms):
    """The build's coverage report counts the MoE op in layer 0 and the dense MLP in layer 1;
    against a config that declares layer 1 sparse too, layer 1 is named as missing."""
    from autodeploy.models import ModelFactoryRegistry
    from autodeploy.transforms import InferenceOptimizer
    from autodeploy.transforms.library.pattern_matcher._coverage import collect_coverage
    from autodeploy.transforms.library.pattern_matcher.verify_pattern_coverage import (
        COVERAGE_META_KEY,
    )

    llm = moe_llms("qwen2_moe")
    assert "moe: 1/1 sparse layers" in llm.model.meta[COVERAGE_META_KEY]["text"]
    factory = ModelFactoryRegistry.get("AutoModelForCausalLM")(llm.args.model)
    pipeline = {"build_model": {"stage": "factory"}, "export_to_gm": {"stage": "export"}}
    exported = InferenceOptimizer(factory, pipeline)(None)
    all_sparse = tiny_config("qwen2_moe", mlp_only_layers=[])
    coverage = collect_coverage(exported, all_sparse)
    assert coverage.moe.missing_layers == [1] and not coverage.moe.ok


@pytest.mark.parametrize(
    "settings, sparse",
    [
        (dict(num_experts=4), [0, 1, 2, 3]),
        (dict(num_experts=4, mlp_only_layers=[0, 2]), [1, 3]),
        (dict(num_experts=4, decoder_sparse_step=2), [1, 3]),
        (dict(n_routed_experts=4, first_k_dense_replace=1), [1, 2, 3]),
        (dict(intermediate_size=8), []),
    ],
)
def test_expected_sparse_layers_from_the_config(settings, sparse):
    from types import SimpleNamespace

    from autodeploy.transforms.library.pattern_matcher._moe_coverage import expected_moe_layers

    assert expected_moe_layers(SimpleNamespace(num_hidden_layers=4, **settings)) == sparse


def test_bench_roofline_counts_only_the_top_k_experts():
    """tiny-moe: 8 experts, top-2: a decode step reads 2/8 of each layer's expert weights."""
    from autodeploy.tools.bench_presets import load_preset, weight_bytes_per_step

    config = load_preset("tiny-moe").config
    hidden, moe_inter, layers = config["hidden_size"], config["moe_intermediate_size"], 2
    expert_bytes = 3 * hidden * moe_inter * 4  # gate, up, down of one expert, fp32
    all_experts = dict(config, num_experts_per_tok=8)
    read_all = weight_bytes_per_step(all_experts, torch.float32)
    read_top2 = weight_bytes_per_step(config, torch.float32)
    assert read_all - read_top2 == layers * 6 * expert_bytes
