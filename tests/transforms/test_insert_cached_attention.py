"""insert_cached_attention: structure, backend selection, errors, and cached == uncached.

The main test builds the default pipeline (autodeploy/config/default.yaml) on a tiny Llama
checkpoint and checks that prefill, chunked prefill, decode and mixed batches through the paged
cache give the logits of a full recomputation with Hugging Face eager.
"""

import operator
from pathlib import Path

import pytest
import torch
import yaml
from cached_model_helpers import CachedRunner, export_tiny, make_cm
from tiny_models import save_tiny

from autodeploy.config import LlmArgs
from autodeploy.config.layers import DEFAULT_YAML_PATH
from autodeploy.custom_ops.attention.descriptor import (
    ATTENTION_CONVENTION,
    AttentionRegistry,
    UnsupportedAttentionError,
)
from autodeploy.custom_ops.attention.torch_cached_backend import TorchCachedAttention
from autodeploy.custom_ops.cached_op import register_convention_fake
from autodeploy.models import ModelFactoryRegistry
from autodeploy.transforms import InferenceOptimizer, TransformRegistry
from autodeploy.transforms.graph_utils import count_ops, placeholders
from autodeploy.utils.errors import BuildError, ConfigError

ATTENTION = torch.ops.auto_deploy.torch_attention
CACHED = torch.ops.auto_deploy.torch_cached_attention
SDPA_CACHED = torch.ops.auto_deploy.sdpa_cached_attention
METADATA = ["batch_info_host", "cu_seqlen", "input_pos", "cache_loc", "cu_num_pages"]
CACHE_STAGE = {
    "move_inputs_to_device": {"stage": "weight_load"},  # export left the input values on meta
    "insert_cached_attention": {"stage": "cache_init", "backend": "torch"},  # the reference
    "initialize_cache": {"stage": "cache_init"},
}


def build_cached(gm, cm, **insert):
    config = {k: dict(v) for k, v in CACHE_STAGE.items()}
    config["insert_cached_attention"].update(insert)
    return InferenceOptimizer(None, config)(cm, gm)


# ---------------------------------------------------------------- structure and errors


def test_replaces_every_layer_and_registers_inputs_and_caches():
    _, gm = export_tiny()
    assert count_ops(gm, ATTENTION) == 2
    cm = make_cm()
    gm = build_cached(gm, cm)
    assert count_ops(gm, ATTENTION) == 0 and count_ops(gm, CACHED) == 2
    names = [p.target for p in placeholders(gm)]
    assert names == ["input_ids", "position_ids", *METADATA, "kv_cache_0", "kv_cache_1"]
    assert set(METADATA) <= set(cm.info.active_args)
    handler = cm.resources["kv_cache_0"]
    assert (handler.num_kv_heads, handler.head_dim, handler.dtype) == (2, 8, torch.float32)
    assert set(cm.named_args) == set(names)
    # all layers share the metadata inputs; each has its own cache
    calls = [n for n in gm.graph.nodes if n.target == CACHED.default or n.target == CACHED]
    assert {tuple(a.name for a in c.args[3:8]) for c in calls} == {tuple(METADATA)}
    assert [c.args[8].name for c in calls] == ["kv_cache_0", "kv_cache_1"]
    record = gm.meta["_autodeploy"]["transform_history"]["insert_cached_attention"]
    assert record.num_matches == 2


@pytest.mark.parametrize(
    "features", [{}, {"sliding_window": 3}, {"logit_cap": 1.5}, {"use_sinks": True}]
)
def test_tiny_model_cached_equals_uncached(features):
    model, gm = export_tiny(**features)
    cm = make_cm(page_size=4)
    gm = build_cached(gm, cm)
    runner = CachedRunner(gm, cm)
    prompts = {0: [3, 1, 4, 1, 5, 9, 2, 6, 5], 1: [2, 7, 1, 8, 2]}
    steps = [
        [(0, prompts[0]), (1, prompts[1][:3])],
        [(1, prompts[1][3:]), (0, [3])],
        [(0, [5]), (1, [8])],
        [(0, [9]), (1, [7])],
    ]
    for schedule in steps:
        got = runner.step(schedule)
        for seq, new in schedule:
            tokens = torch.tensor([runner.tokens[seq]])
            with torch.no_grad():
                expected = model(tokens, torch.arange(tokens.shape[1])[None])[0, -len(new) :]
            torch.testing.assert_close(got[seq], expected, atol=1e-5, rtol=1e-5)


def test_rejects_bnsd_layout_with_a_hint():
    _, gm = export_tiny(layout="bnsd")
    with pytest.raises(UnsupportedAttentionError, match="match_attention_layout"):
        build_cached(gm, make_cm())


def test_every_node_records_its_backend_and_why_not_the_others(monkeypatch):
    """auto on CPU: the reference for every layer; an explicit backend that cannot run here is
    a build-time error naming the reason, before the graph is touched."""
    from autodeploy.custom_ops.backend_resolver import recorded_choices

    _, gm = export_tiny()
    gm = build_cached(gm, make_cm())
    choices = recorded_choices(gm)
    assert [(c["family"], c["backend"], c["requested"]) for c in choices] == [
        ("attention", "torch", "auto")
    ] * 2
    assert choices[0]["refused"]["triton"] == "auto does not pick it on cpu"

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _, gm = export_tiny()
    with pytest.raises(UnsupportedAttentionError, match="'triton' cannot replace .*CUDA"):
        build_cached(gm, make_cm(), backend="triton")
    assert count_ops(gm, ATTENTION) == 2


def test_unknown_backend_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="'torch'"):
        InferenceOptimizer(
            None, {"insert_cached_attention": {"stage": "cache_init", "backend": "torhc"}}
        )


def test_attn_backend_shortcut_sets_the_backend():
    args = LlmArgs(attn_backend="torch")
    assert args.transforms["insert_cached_attention"]["backend"] == "torch"


def test_no_attention_is_reported():
    gm = torch.fx.symbolic_trace(lambda input_ids: input_ids + 1)
    config = {"insert_cached_attention": {"stage": "cache_init", "requires_shape_prop": False}}
    with pytest.raises(BuildError, match="found no"):
        InferenceOptimizer(None, config, strict=True)(make_cm(), gm)
    InferenceOptimizer(None, config)(make_cm(), gm)  # non-strict: a warning


def test_needs_a_sequence_interface():
    _, gm = export_tiny()
    with pytest.raises(ConfigError, match="CachedSequenceInterface"):
        InferenceOptimizer(
            None,
            {
                "move_inputs_to_device": {"stage": "weight_load", "device": "cpu"},
                "insert_cached_attention": {"stage": "cache_init", "backend": "torch"},
            },
        )(None, gm)


# A backend with a prepare-metadata op and a host hook, to test that part of the protocol.
@torch.library.custom_op("autodeploy_test::prepare_positions", mutates_args=())
def _prepare(input_pos: torch.Tensor, seq_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return input_pos + seq_len, seq_len * 2


@_prepare.register_fake
def _prepare_fake(input_pos, seq_len):
    return torch.empty_like(input_pos), torch.empty_like(seq_len)


@torch.library.custom_op("autodeploy_test::cached_with_extra", mutates_args=("kv_cache",))
def _cached_with_extra(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch_info_host: torch.Tensor,
    cu_seqlen: torch.Tensor,
    input_pos: torch.Tensor,
    cache_loc: torch.Tensor,
    cu_num_pages: torch.Tensor,
    end_pos: torch.Tensor,
    doubled: torch.Tensor,
    kv_cache: torch.Tensor,
    scale: float | None,
    sliding_window: int | None,
    logit_cap: float | None,
    sinks: torch.Tensor | None,
) -> torch.Tensor:
    assert torch.equal(end_pos, input_pos + (cu_seqlen[1:] - cu_seqlen[:-1]))
    return CACHED(
        q,
        k,
        v,
        batch_info_host,
        cu_seqlen,
        input_pos,
        cache_loc,
        cu_num_pages,
        kv_cache,
        scale,
        sliding_window,
        logit_cap,
        sinks,
    )


register_convention_fake(_cached_with_extra, ATTENTION_CONVENTION)


HOST_CALLS = []


@AttentionRegistry.register("_test_with_prepare")
class _WithPrepare(TorchCachedAttention):
    prepared_args = ("end_pos", "doubled")
    auto_priority = {}  # by name only

    @classmethod
    def get_cached_op(cls):
        return torch.ops.autodeploy_test.cached_with_extra

    @classmethod
    def get_prepare_metadata_op(cls):
        return torch.ops.autodeploy_test.prepare_positions, 2

    @classmethod
    def get_host_prepare_function(cls):
        return _host_hook


def _host_hook(info):
    HOST_CALLS.append(info.num_sequences)


def test_prepare_metadata_op_is_inserted_once_and_host_hook_runs():
    model, gm = export_tiny()
    cm = make_cm()
    gm = build_cached(gm, cm, backend="_test_with_prepare")
    prepare = [n for n in gm.graph.nodes if "prepare_positions" in str(n.target)]
    assert len(prepare) == 1
    getitems = [
        n for n in gm.graph.nodes if n.target is operator.getitem and n.args[0] is prepare[0]
    ]
    assert len(getitems) == 2 and "seq_len" in cm.info.active_args
    HOST_CALLS.clear()
    runner = CachedRunner(gm, cm)
    got = runner.step([(0, [1, 2, 3, 4, 5])])
    with torch.no_grad():
        expected = model(torch.tensor([[1, 2, 3, 4, 5]]), torch.arange(5)[None])[0]
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)
    assert HOST_CALLS == [1]


# ---------------------------------------------------------------- cached vs uncached (HF)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The default pipeline on a tiny Llama checkpoint: (cached graph, cm, HF eager model)."""
    path = Path(tmp_path_factory.mktemp("tiny_llama"))
    hf_model = save_tiny(path, "llama", seed=1)
    transforms = yaml.safe_load(DEFAULT_YAML_PATH.read_text())["transforms"]
    transforms = {k: v for k, v in transforms.items() if TransformRegistry.has(k)}
    transforms.setdefault("match_attention_layout", {"stage": "pattern_matcher"})
    # These checks compare the logits of every prompt token, not only the sampled last one.
    transforms["gather_logits_before_lm_head"]["enabled"] = False
    # The graph is inspected below: keep op nodes as ops (the CPU default torch-direct would
    # turn them into plain function calls).
    transforms["compile_model"]["backend"] = "torch-simple"
    factory = ModelFactoryRegistry.get("AutoModelForCausalLM")(str(path))
    cm = make_cm(page_size=4, max_seq_len=64, max_batch_size=4, max_num_tokens=128)
    gm = InferenceOptimizer(factory, transforms)(cm)
    # auto on CPU: the batched sdpa backend
    assert count_ops(gm, ATTENTION) == 0 and count_ops(gm, SDPA_CACHED) == 2
    return gm, cm, hf_model


def hf_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(torch.tensor([tokens])).logits[0]


def check_step(runner, hf_model, schedule):
    got = runner.step(schedule)
    for seq, new in schedule:
        expected = hf_logits(hf_model, runner.tokens[seq])[-len(new) :]
        torch.testing.assert_close(got[seq], expected, atol=1e-4, rtol=1e-4)
    return got


def test_llama_prefill_and_decode_match_hf(llama):
    gm, cm, hf_model = llama
    runner = CachedRunner(gm, cm)
    prompts = [[5, 17, 3], [9, 8, 7, 6, 5, 4, 3, 2, 1], [11 + i for i in range(14)]]
    got = check_step(runner, hf_model, [(i, p) for i, p in enumerate(prompts)])
    for _ in range(4):  # greedy decode, every step checked against full recomputation
        schedule = [(i, [int(got[i][-1].argmax())]) for i in range(len(prompts))]
        got = check_step(runner, hf_model, schedule)
        assert cm.info.is_decode_only


def test_llama_chunked_prefill_and_mixed_batches_match_hf(llama):
    gm, cm, hf_model = llama
    runner = CachedRunner(gm, cm)
    long_prompt = [(7 * i) % 250 + 3 for i in range(19)]
    check_step(runner, hf_model, [(0, [4, 5, 6, 7, 8, 9])])
    check_step(runner, hf_model, [(1, long_prompt[:7]), (0, [10])])  # new prompt joins
    check_step(runner, hf_model, [(1, long_prompt[7:15]), (2, [1, 2]), (0, [11])])
    check_step(runner, hf_model, [(1, long_prompt[15:]), (2, [3]), (0, [12])])
    check_step(runner, hf_model, [(0, [13]), (1, [14]), (2, [15])])


def test_llama_padded_decode_batch_matches_hf(llama):
    gm, cm, hf_model = llama
    runner = CachedRunner(gm, cm)
    check_step(runner, hf_model, [(0, [1, 2, 3, 4, 5]), (1, [6, 7])])
    cm.info.set_padded_batch_sizes([4])
    try:
        check_step(runner, hf_model, [(0, [8]), (1, [9])])
        assert cm.info.batch_size == 4 and cm.info.num_sequences == 2
    finally:
        cm.info.set_padded_batch_sizes(None)
