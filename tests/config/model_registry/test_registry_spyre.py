"""vLLM-Spyre registry features: version conditions, device-settings variants, a chunked-prefill
budget below max_seq_len (and the runtime really chunking), _templates anchors, warm-up shapes;
three vLLM-Spyre entries translated into our format (``spyre/``) as golden cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from autodeploy.config import LlmArgs
from autodeploy.config.model_registry import apply_registry_environment, load_registry, loader
from autodeploy.config.model_registry.conditions import (
    parse_condition,
    resolve_versioned,
)
from autodeploy.utils.errors import ConfigError

SPYRE_DIR = Path(__file__).with_name("spyre")
TP4_ENV = {
    "VLLM_DT_MAX_BATCH_TKV_LIMIT": "131072",
    "FLEX_HDMA_P2PSIZE": "268435456",
    "FLEX_HDMA_COLLSIZE": "33554432",
}
TORCH = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


# ----------------------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    "text, package, op, version",
    [
        ("torch_lt_2_12", "torch", "lt", (2, 12)),
        ("torch_sendnn_lt_1_0_3", "torch_sendnn", "lt", (1, 0, 3)),
        ("transformers_ge_5", "transformers", "ge", (5,)),
    ],
)
def test_condition_grammar(text, package, op, version):
    condition = parse_condition(text)
    assert (condition.package, condition.op, condition.version) == (package, op, version)


@pytest.mark.parametrize("text", ["torch<2.12", "torch_lt_", "lt_2_1", "torch_between_1_2", 3])
def test_bad_conditions_are_errors(text):
    with pytest.raises(ValueError, match="is not a version condition: a condition is"):
        parse_condition(text)


def test_conditions_compare_the_installed_version():
    major, minor = TORCH
    assert parse_condition(f"torch_ge_{major}_{minor}").holds()
    assert parse_condition(f"torch_eq_{major}_{minor}").holds()  # 2.13 == 2.13.0
    assert not parse_condition(f"torch_lt_{major}_{minor}").holds()
    assert not parse_condition("no_such_package_ge_0").holds()  # not installed: false
    assert resolve_versioned({"torch_lt_1_0": 1, f"torch_ge_{major}": 2, "default": 3})[0] == 2
    assert resolve_versioned({"torch_lt_1_0": 1, "default": 3}) == (
        3,
        "default (no condition holds)",
    )


# ----------------------------------------------------------------------------- schema


ENTRY = """\
version: 1
models:
  - name: org/model
    yaml_extra: [base.yaml]
    deployments: [{world_size: 1, max_seq_len: 32768, max_batch_size: 2}]
    device_settings:
      1: {num_kv_pages: %s}
"""


@pytest.mark.parametrize(
    "value, message",
    [
        ("{torch_lt_2_12: 2080}", "needs a 'default'"),
        ("{torch_before_2_12: 2080, default: 8192}", "'torch_before_2_12' is not a version"),
        ("{torch_lt_2_12: -1, default: 8192}", "expected an integer >= 1"),
    ],
)
def test_bad_versioned_values_fail_the_load(make_registry, value, message):
    root = make_registry(ENTRY % value, {"base.yaml": "max_seq_len: 32768\n"})
    with pytest.raises(ConfigError, match=message) as info:
        load_registry(root)
    assert "device_settings[1][0].num_kv_pages" in str(info.value)


def test_versioned_block_count_picks_by_the_installed_version(make_registry):
    major, _ = TORCH
    value = f"{{torch_lt_{major}_0: 2080, torch_ge_{major}_0: 4096, default: 8192}}"
    make_registry(ENTRY % value, {"base.yaml": "max_seq_len: 32768\nmax_batch_size: 2\n"})
    args = LlmArgs(model="org/model", use_registry=True, kv_cache_config={"tokens_per_block": 16})
    assert args.kv_cache_config.max_tokens == 4096 * 16


# ----------------------------------------------------------------------------- golden entries


@pytest.fixture
def spyre(monkeypatch):
    monkeypatch.setattr(loader, "REGISTRY_DIR", SPYRE_DIR)
    for name in TP4_ENV:
        monkeypatch.delenv(name, raising=False)
    return load_registry(SPYRE_DIR)


def test_templates_are_anchors_only(spyre):
    granite = spyre.lookup("ibm-granite/granite-3.3-8b-instruct")
    tp4 = [d for d in granite.deployments if d.world_size == 4]
    assert [d.device_settings.max_num_tokens for d in tp4] == [1024, None]
    assert tp4[0].device_settings.env == tp4[1].device_settings.env  # one anchor, two uses


def test_granite_tp4_long_context_gets_its_device_config_and_chunked_budget(spyre):
    args = LlmArgs(
        model="ibm-granite/granite-3.3-8b-instruct",
        use_registry=True,
        world_size=4,
        max_seq_len=32768,
        max_batch_size=32,
    )
    assert (args.max_num_tokens, args.enable_chunked_prefill) == (1024, True)
    assert (
        args.provenance()["max_num_tokens"] == "registry:models.yaml:device_settings[world_size=4]"
    )
    assert args.kv_cache_config.max_tokens == 8192 * 32  # torch_sendnn is not installed
    environ: dict[str, str] = {}
    records = apply_registry_environment(args, environ)
    assert environ == TP4_ENV and all(not r.overridden for r in records)


def test_granite_tp4_short_context_same_world_size_other_device_config(spyre):
    args = LlmArgs(
        model="ibm-granite/granite-3.3-8b-instruct",
        use_registry=True,
        world_size=4,
        max_seq_len=16384,
        max_batch_size=4,
    )
    assert args.max_num_tokens == 16384  # no step budget in this device config
    assert args.provenance()["max_num_tokens"] == "derived"
    assert args.kv_cache_config.max_tokens == 8192 * 32


def test_granite_tp1_has_no_device_settings(spyre):
    args = LlmArgs(
        model="ibm-granite/granite-3.3-8b-instruct",
        use_registry=True,
        max_seq_len=3072,
        max_batch_size=16,
    )
    assert args.kv_cache_config.max_tokens is None
    assert args.cuda_graph_batch_sizes == [1, 2, 4, 8, 16, 32]
    assert apply_registry_environment(args, {}) == []


def test_llama_device_settings_chosen_by_condition(spyre):
    args = LlmArgs(
        model="meta-llama/Llama-3.1-8B-Instruct",
        use_registry=True,
        world_size=4,
        max_seq_len=32768,
        max_batch_size=32,
    )
    assert args.kv_cache_config.max_tokens == 8192 * 32  # torch_lt_2_0 is false here
    assert args.provenance()["kv_cache_config.max_tokens"] == (
        "registry:models.yaml:device_settings[world_size=4]"
    )


def test_embedding_warmup_shapes_become_capture_sizes(spyre):
    args = LlmArgs(model="ibm-granite/granite-embedding-125m-english", use_registry=True)
    assert args.cuda_graph_batch_sizes == [8, 32, 64]
    assert (args.max_batch_size, args.max_seq_len, args.max_num_tokens) == (64, 512, 4096)
    source = "registry:models.yaml:static_batching[world_size=1]"
    assert args.provenance()["max_batch_size"] == source
    assert args.provenance()["transforms.compile_model.cuda_graph_batch_sizes"] == source
    explicit = LlmArgs(
        model="ibm-granite/granite-embedding-125m-english", use_registry=True, max_batch_size=4
    )
    assert explicit.max_batch_size == 4  # the user's value still wins


# ----------------------------------------------------------------------------- the runtime


def test_runtime_chunks_a_long_prompt_under_a_1024_token_budget(tmp_path):
    """32k max length, 1024-token steps: a 2100-token prompt takes 3 prefill steps and the
    greedy tokens equal Hugging Face eager's."""
    from tiny_models import save_tiny

    from autodeploy import LLM, SamplingParams

    model = save_tiny(tmp_path / "ckpt", "llama", max_position_embeddings=32768).eval()
    prompt = torch.randint(3, 256, (2100,), generator=torch.Generator().manual_seed(0)).tolist()
    new_tokens = 4
    with torch.no_grad():
        expected = model.generate(
            torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False
        )[0, len(prompt) :].tolist()
    settings = dict(
        device="cpu",
        attn_backend="torch",
        compile_backend="torch-simple",
        max_seq_len=32768,
        max_num_tokens=1024,
        enable_chunked_prefill=True,
        max_batch_size=1,
        kv_cache_config={"tokens_per_block": 32, "max_tokens": 4096},
    )
    with LLM(model=str(tmp_path / "ckpt"), **settings) as llm:
        before = llm.engine.stats.steps
        out = llm.generate(prompt, SamplingParams(max_tokens=new_tokens, temperature=0.0))
        steps = llm.engine.stats.steps - before
    assert out[0].outputs[0].token_ids == expected
    # ceil(2100 / 1024) = 3 prefill steps (the last one samples token 1), then 3 decode steps
    assert steps == math.ceil(2100 / 1024) + new_tokens - 1
