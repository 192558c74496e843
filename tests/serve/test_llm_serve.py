"""llm-serve / RayLLM model files: every field's mapping, and the errors for what we refuse."""

from __future__ import annotations

import copy

import pytest
import yaml

from autodeploy.config import LlmArgs
from autodeploy.serve.llm_serve import load_model_file, parse_model_file
from autodeploy.serve.prompt_format import PromptFormat
from autodeploy.utils.errors import ConfigError

STATIC = {
    "deployment_config": {
        "autoscaling_config": {
            "min_replicas": 1,
            "initial_replicas": 1,
            "max_replicas": 4,
            "target_num_ongoing_requests_per_replica": 8,
            "metrics_interval_s": 10.0,
            "look_back_period_s": 30.0,
            "smoothing_factor": 1.0,
            "downscale_delay_s": 300.0,
            "upscale_delay_s": 90.0,
        },
        "max_concurrent_queries": 64,
        "ray_actor_options": {"resources": {"accelerator_type_a10": 0.01}},
    },
    "model_config": {
        "model_id": "meta-llama/Llama-2-7b-chat-hf",
        "model_url": "https://example.org/llama",
        "max_input_words": 800,
        "initialization": {
            "hf_model_id": "/models/llama-2-7b-chat",
            "initializer": {
                "type": "SingleDevice",
                "dtype": "bfloat16",
                "from_pretrained_kwargs": {"use_cache": True},
                "torch_compile": {"backend": "inductor", "mode": "max-autotune"},
            },
            "pipeline": "transformers",
        },
        "generation": {
            "max_batch_size": 6,
            "batch_wait_timeout_s": 0,
            "generate_kwargs": {
                "do_sample": True,
                "max_new_tokens": 512,
                "min_new_tokens": 2,
                "temperature": 0.7,
                "repetition_penalty": 1.1,
                "top_p": 0.92,
                "top_k": 0,
            },
            "prompt_format": "<s>[INST] {instruction} [/INST]",
            "stopping_sequences": ["</s>", 2, "13", [29871, 13]],
        },
    },
    "scaling_config": {
        "num_workers": 1,
        "num_gpus_per_worker": 1,
        "num_cpus_per_worker": 4,
        "resources_per_worker": {"accelerator_type_a10": 0.01},
    },
}


def parse(data, trust=False):
    return parse_model_file(data, "model.yaml", trust_remote_code=trust)


def without(key_path: str):
    data = copy.deepcopy(STATIC)
    *parents, last = key_path.split(".")
    place = data
    for part in parents:
        place = place[part]
    del place[last]
    return data


def with_value(key_path: str, value):
    data = copy.deepcopy(STATIC)
    *parents, last = key_path.split(".")
    place = data
    for part in parents:
        place = place.setdefault(part, {})
    place[last] = value
    return data


def test_static_file_maps_every_field():
    spec = parse(STATIC)
    assert spec.model_id == "meta-llama/Llama-2-7b-chat-hf" and spec.enabled
    assert spec.max_input_words == 800
    assert spec.settings == {
        "model": "/models/llama-2-7b-chat",
        "world_size": 1,
        "dtype": "bfloat16",
        "compile_backend": "torch-compile",
        "max_batch_size": 6,
    }
    assert spec.sampling_defaults == {
        "max_tokens": 512,
        "min_tokens": 2,
        "temperature": 0.7,
        "repetition_penalty": 1.1,
        "top_p": 0.92,
        "top_k": None,  # llm-serve's 0 = off
        "stop": ["</s>"],
        "stop_token_ids": [2, 13],  # ints and numeric strings are token ids
    }
    assert spec.stop_token_sequences == [[29871, 13]]
    assert spec.prompt_format == PromptFormat(user="<s>[INST] {instruction} [/INST]")
    options = spec.deployment_options
    assert options["name"] == "meta-llama--Llama-2-7b-chat-hf"
    assert options["autoscaling_config"]["target_ongoing_requests"] == 8
    assert "target_num_ongoing_requests_per_replica" not in options["autoscaling_config"]
    assert options["max_ongoing_requests"] == 64
    assert options["ray_actor_options"] == {
        "num_cpus": 4.0,
        "num_gpus": 1.0,
        "resources": {"accelerator_type_a10": 0.01},
    }
    assert "placement_group_bundles" not in options
    LlmArgs(**{**spec.settings, "model": "builtin:tiny-llama"})  # valid settings


def test_do_sample_false_is_greedy():
    spec = parse(with_value("model_config.generation.generate_kwargs", {"do_sample": False}))
    assert spec.sampling_defaults["temperature"] == 0.0 and "top_p" not in spec.sampling_defaults


@pytest.mark.parametrize(
    "kind, scaling, world_size",
    [
        ("SingleDevice", {"num_workers": 1, "num_gpus_per_worker": 1}, 1),
        ("DeviceMap", {"num_workers": 1, "num_gpus_per_worker": 1}, 1),
        ("DeviceMap", {"num_workers": 2, "num_gpus_per_worker": 1}, 2),
        ("DeepSpeed", {"num_workers": 4, "num_gpus_per_worker": 1}, 4),
    ],
)
def test_initializer_type_maps_onto_world_size(kind, scaling, world_size):
    data = with_value("model_config.initialization.initializer.type", kind)
    data["scaling_config"] = scaling
    spec = parse(data)
    assert spec.settings["world_size"] == world_size
    options = spec.deployment_options
    if world_size > 1:  # one replica holds a placement group of world_size GPUs
        assert options["placement_group_bundles"] == [{"CPU": float(world_size), "GPU": world_size}]
        assert options["placement_group_strategy"] == "STRICT_PACK"
        assert options["ray_actor_options"]["num_gpus"] == world_size
    else:
        assert "placement_group_bundles" not in options


def test_engine_config_form():
    data = {
        "deployment_config": {"max_concurrent_queries": 32},
        "engine_config": {
            "type": "VLLMEngine",
            "model_id": "mistralai/Mistral-7B-Instruct-v0.1",
            "hf_model_id": "/models/mistral",
            "max_total_tokens": 4096,
            "engine_kwargs": {
                "max_num_seqs": 24,
                "max_num_batched_tokens": 4096,
                "gpu_memory_utilization": 0.9,
                "tensor_parallel_size": 1,
                "dtype": "bfloat16",
            },
            "generation": {
                "prompt_format": {
                    "system": "{instruction}\n",
                    "assistant": "{instruction}</s>",
                    "trailing_assistant": "",
                    "user": "[INST] {system}{instruction} [/INST]",
                    "system_in_user": True,
                    "default_system_message": "",
                },
                "stopping_sequences": [],
            },
        },
        "scaling_config": {"num_workers": 1, "num_gpus_per_worker": 1, "num_cpus_per_worker": 8},
    }
    spec = parse(data)
    assert spec.model_id == "mistralai/Mistral-7B-Instruct-v0.1"
    assert spec.settings == {
        "model": "/models/mistral",
        "max_seq_len": 4096,
        "max_batch_size": 24,
        "max_num_tokens": 4096,
        "kv_cache_config": {"free_gpu_memory_fraction": 0.9},
        "world_size": 1,
        "dtype": "bfloat16",
    }
    fmt = spec.prompt_format
    chat = fmt.render_chat(
        [
            {"role": "system", "content": "Be brief. "},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert chat == "[INST] Be brief. Hi [/INST]Hello</s>[INST] Bye [/INST]"


def test_continuous_batching_limits_map_onto_ours():
    generation = {
        "max_total_tokens": 2048,
        "max_batch_prefill_tokens": 4096,
        "max_batch_total_tokens": 16000,
        "max_input_length": 1024,
        "max_waiting_tokens": 20,
    }
    spec = parse(with_value("model_config.generation", generation))
    assert spec.settings["max_seq_len"] == 2048 and spec.settings["max_num_tokens"] == 4096
    assert spec.settings["kv_cache_config"] == {"max_tokens": 16000}


@pytest.mark.parametrize(
    "key_path, value, fragment",
    [
        ("model_config.initialization.s3_mirror_config", {"bucket_uri": "s3://x"}, "s3_mirror"),
        ("model_config.initialization.runtime_env", {"pip": ["x"]}, "runtime_env"),
        ("model_config.initialization.initializer.type", "LlamaCpp", "'LlamaCpp' is not"),
        ("model_config.initialization.pipeline", "llamacpp", "pipeline 'llamacpp'"),
        ("model_config.initialization.initializer.use_bettertransformer", True, "bettertransf"),
        ("model_config.initialization.initializer.dtype", "int8", "'int8' is not supported"),
        ("model_config.generation.generate_kwargs.typical_p", 0.9, "typical_p is not a known"),
        ("deployment_config.max_concurent_queries", 3, "Did you mean 'max_concurrent_queries'"),
        ("scaling_config.num_wrkers", 3, "Did you mean 'num_workers'"),
        ("llamaCpp", {}, "llamaCpp is not a known key"),
        ("deployment_config.autoscaling_config.max_replica", 3, "Did you mean 'max_replicas'"),
        ("model_config.generation.stopping_sequences", [1.5], "a token id or a list"),
    ],
)
def test_unsupported_and_unknown_keys_are_errors_naming_them(key_path, value, fragment):
    with pytest.raises(ConfigError, match="model.yaml") as info:
        parse(with_value(key_path, value))
    assert fragment in str(info.value)


def test_model_id_is_required_and_one_config_form():
    with pytest.raises(ConfigError, match="model_config.model_id is required"):
        parse(without("model_config.model_id"))
    both = copy.deepcopy(STATIC)
    both["engine_config"] = {"model_id": "x"}
    with pytest.raises(ConfigError, match="exactly one"):
        parse(both)


def test_trust_remote_code_needs_the_command_line_flag():
    data = with_value(
        "model_config.initialization.initializer.from_pretrained_kwargs.trust_remote_code", True
    )
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        parse(data)
    assert parse(data, trust=True).settings["trust_remote_code"] is True


def test_prompt_format_needs_instruction_placeholder():
    with pytest.raises(ConfigError, match="instruction"):
        parse(with_value("model_config.generation.prompt_format", "no placeholder"))
    fmt = PromptFormat(user="<u>{instruction}</u>", trailing_assistant="<a>")
    assert fmt.render_instruction("hi") == "<u>hi</u><a>"


def test_load_from_a_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(STATIC))
    assert load_model_file(path).model_id == STATIC["model_config"]["model_id"]
    with pytest.raises(ConfigError, match="is not a file"):
        load_model_file(tmp_path / "missing.yaml")
