"""LlmArgs: layer precedence, field validation, derived values and error messages."""

from __future__ import annotations

import os
import sys
import types

import pytest

from autodeploy.config import KvCacheConfig, LlmArgs
from autodeploy.config import settings as settings_module
from autodeploy.utils.errors import ConfigError
from autodeploy.utils.registry import Registry

# ----------------------------------------------------------------------------- precedence


def test_field_default_then_default_yaml():
    args = LlmArgs()
    assert args.max_seq_len == 2048  # field default
    assert args.max_batch_size == 4  # the (test) default.yaml sets it
    assert list(args.transforms) == [
        "_test_cfg_dummy_a",
        "_test_cfg_dummy_b",
        "_test_cfg_attention",
    ]


def test_full_precedence_chain(write_yaml, monkeypatch):
    a = write_yaml("a.yaml", "max_batch_size: 5\nmax_seq_len: 100\nworld_size: 2\ndtype: float16\n")
    b = write_yaml("b.yaml", "max_seq_len: 200\nworld_size: 3\ndevice: cpu\n")
    monkeypatch.setenv("AUTODEPLOY_WORLD_SIZE", "4")
    monkeypatch.setenv("AUTODEPLOY_DEVICE", "cuda:1")
    args = LlmArgs.from_cli({"device": "cuda:2"}, yaml_extra=[a, b], world_size=5)
    assert args.max_batch_size == 5  # yaml a over default.yaml
    assert args.dtype == "float16"  # only in a
    assert args.max_seq_len == 200  # the later file wins
    assert args.world_size == 5  # kwargs over env over files
    assert args.device == "cuda:2"  # cli over env over files
    assert args.yaml_extra == [a, b]


def test_env_beats_yaml_extra_and_kwargs_beat_env(write_yaml, monkeypatch):
    a = write_yaml("a.yaml", "max_seq_len: 100\n")
    monkeypatch.setenv("AUTODEPLOY_MAX_SEQ_LEN", "300")
    assert LlmArgs(yaml_extra=[a]).max_seq_len == 300
    assert LlmArgs(yaml_extra=[a], max_seq_len=400).max_seq_len == 400


def test_cli_beats_kwargs():
    args = LlmArgs.from_cli({"max_seq_len": 64}, max_seq_len=32)
    assert args.max_seq_len == 64


def test_nested_values_merge_across_layers(write_yaml, monkeypatch):
    a = write_yaml("a.yaml", "kv_cache_config:\n  tokens_per_block: 16\n  dtype: float16\n")
    monkeypatch.setenv("AUTODEPLOY_KV_CACHE_CONFIG__TOKENS_PER_BLOCK", "8")
    args = LlmArgs(yaml_extra=[a], kv_cache_config={"max_tokens": 4096})
    assert args.kv_cache_config == KvCacheConfig(
        tokens_per_block=8, dtype="float16", max_tokens=4096
    )


def test_kv_cache_config_object_merges_only_the_fields_it_set(write_yaml):
    a = write_yaml("a.yaml", "kv_cache_config:\n  dtype: bfloat16\n")
    args = LlmArgs(yaml_extra=[a], kv_cache_config=KvCacheConfig(tokens_per_block=64))
    assert args.kv_cache_config.tokens_per_block == 64
    assert args.kv_cache_config.dtype == "bfloat16"


def test_transform_settings_merge_and_lists_replace(write_yaml):
    a = write_yaml(
        "a.yaml",
        """\
        transforms:
          _test_cfg_dummy_b:
            sizes: [7]
            options: {y: 20, z: 30}
        """,
    )
    entry = LlmArgs(yaml_extra=[a]).transforms["_test_cfg_dummy_b"]
    assert entry == {
        "stage": "post_export",
        "backend": "torch",
        "sizes": [7],
        "options": {"x": 1, "y": 20, "z": 30},
    }


def test_new_transform_is_appended_to_keep_run_order(write_yaml):
    a = write_yaml(
        "a.yaml",
        "transforms:\n"
        "  _test_cfg_compile: {stage: compile}\n"
        "  _test_cfg_dummy_a: {enabled: false}\n",
    )
    args = LlmArgs(yaml_extra=[a])
    assert list(args.transforms) == [
        "_test_cfg_dummy_a",
        "_test_cfg_dummy_b",
        "_test_cfg_attention",
        "_test_cfg_compile",
    ]
    assert args.transforms["_test_cfg_dummy_a"] == {"stage": "export", "enabled": False}


def test_literal_interpolation_survives_all_layers(write_yaml, monkeypatch, tmp_path):
    a = write_yaml("a.yaml", "model_kwargs:\n  name: ${oc.env:HOME}\n")
    (tmp_path / "${tok}").mkdir()  # the tokenizer is checked when the settings resolve
    (tmp_path / "${tok}" / "tokenizer.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTODEPLOY_TOKENIZER", "${tok}")
    args = LlmArgs(yaml_extra=[a], model="${model}")
    assert args.model_kwargs == {"name": "${oc.env:HOME}"}
    assert args.tokenizer == "${tok}"
    assert args.model == "${model}"


def test_single_yaml_extra_path_becomes_a_list(write_yaml):
    a = write_yaml("a.yaml", "max_seq_len: 10\n")
    assert LlmArgs(yaml_extra=a).yaml_extra == [a]


def test_kwargs_are_copied_not_aliased():
    model_kwargs = {"num_hidden_layers": 2}
    args = LlmArgs(model_kwargs=model_kwargs)
    model_kwargs["num_hidden_layers"] = 5
    assert args.model_kwargs == {"num_hidden_layers": 2}


# ----------------------------------------------------------------------------- environment


def test_env_values_are_json_with_string_fallback(monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_CUDA_GRAPH_BATCH_SIZES", "[4, 1, 2, 2]")
    monkeypatch.setenv("AUTODEPLOY_MODEL_KWARGS", '{"num_hidden_layers": 2}')
    monkeypatch.setenv("AUTODEPLOY_MODEL_KWARGS__TIE_WORD_EMBEDDINGS", "false")
    monkeypatch.setenv("AUTODEPLOY_MODEL", "123")  # a string field stays a string
    monkeypatch.setenv("AUTODEPLOY_STRICT", "true")
    monkeypatch.setenv("AUTODEPLOY_TRANSFORMS___TEST_CFG_DUMMY_B__BACKEND", "flashinfer")
    args = LlmArgs()
    assert args.cuda_graph_batch_sizes == [1, 2, 4]
    assert args.model_kwargs == {"num_hidden_layers": 2, "tie_word_embeddings": False}
    assert args.model == "123"
    assert args.strict is True
    assert args.transforms["_test_cfg_dummy_b"]["backend"] == "flashinfer"


def test_non_config_env_vars_are_ignored_silently(monkeypatch, ad_logs):
    for name in ("LOG_LEVEL", "DUMP_GRAPHS_DIR", "VERIFY_GRAPHS", "PLUGINS", "LOG_ALL_RANKS"):
        monkeypatch.setenv(f"AUTODEPLOY_{name}", "x" if name != "LOG_LEVEL" else "INFO")
    LlmArgs()
    assert not [r for r in ad_logs.records if "Ignoring environment variable" in r.getMessage()]


@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("AUTODEPLOY_MAX_SEQ_LENN", "AUTODEPLOY_MAX_SEQ_LEN"),
        (
            "AUTODEPLOY_KV_CACHE_CONFI__TOKENS_PER_BLOCK",
            "AUTODEPLOY_KV_CACHE_CONFIG__TOKENS_PER_BLOCK",
        ),
    ],
)
def test_unknown_env_var_is_an_error_with_suggestion(monkeypatch, name, suggestion):
    # It used to be a warning at the top level (the run went on with the default).
    monkeypatch.setenv(name, "5")
    with pytest.raises(ConfigError) as info:
        LlmArgs()
    message = str(info.value)
    assert f"{name} is not an autodeploy setting. Did you mean '{suggestion}'?" in message


def test_misspelled_nested_env_key_is_an_error(monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_KV_CACHE_CONFIG__TOKENS_PER_BLOK", "16")
    with pytest.raises(ConfigError, match="tokens_per_block"):
        LlmArgs()


def test_bad_env_list_value_hints_at_json(monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_CUDA_GRAPH_BATCH_SIZES", "1,2")
    with pytest.raises(ConfigError) as info:
        LlmArgs()
    text = str(info.value)
    assert "cuda_graph_batch_sizes" in text
    assert "env:AUTODEPLOY_CUDA_GRAPH_BATCH_SIZES" in text
    assert "Environment values for lists and mappings are JSON" in text


# ----------------------------------------------------------------------------- fields


def test_defaults_and_derived_max_num_tokens():
    args = LlmArgs()
    assert args.model == "builtin:tiny-llama"
    assert args.model_factory == "AutoModelForCausalLM"
    assert args.trust_remote_code is False
    assert args.dtype == "auto" and args.device == "auto"
    assert args.kv_cache_config == KvCacheConfig()
    assert args.kv_cache_config.tokens_per_block == 32
    assert args.kv_cache_config.free_gpu_memory_fraction == 0.9
    assert args.max_num_tokens == 2048
    assert LlmArgs(max_seq_len=4096).max_num_tokens == 4096
    assert LlmArgs(max_seq_len=100, max_num_tokens=100).max_num_tokens == 100


def test_max_num_tokens_smaller_than_max_seq_len_is_an_error():
    with pytest.raises(ConfigError) as info:
        LlmArgs(max_seq_len=4096, max_num_tokens=1024)
    text = str(info.value)
    assert "max_num_tokens=1024 (from kwargs) is smaller than max_seq_len=4096" in text
    assert "Raise max_num_tokens to at least 4096" in text


def test_every_field_has_a_description():
    for model in (LlmArgs, KvCacheConfig):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_valid_devices(device):
    assert LlmArgs(device=device).device == device


def test_bad_device_message():
    with pytest.raises(
        ConfigError,
        match=r"device: device must be 'auto', 'cpu', 'cuda' or "
        r"'cuda:N' \(got 'gpu'\) \(from kwargs\)",
    ):
        LlmArgs(device="gpu")


def test_resolved_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert LlmArgs().resolved_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert LlmArgs().resolved_device() == "cuda"
    assert LlmArgs(device="cpu").resolved_device() == "cpu"


def test_cuda_graph_batch_sizes_are_sorted_and_validated():
    assert LlmArgs(cuda_graph_batch_sizes=[8, 1, 4, 1]).cuda_graph_batch_sizes == [1, 4, 8]
    assert LlmArgs(cuda_graph_batch_sizes=2).cuda_graph_batch_sizes == [2]
    with pytest.raises(ConfigError, match="every CUDA graph batch size must be >= 1"):
        LlmArgs(cuda_graph_batch_sizes=[0, 1])


def test_to_dict_is_plain_and_round_trips():
    args = LlmArgs(max_seq_len=128, model_kwargs={"num_hidden_layers": 2})
    data = args.to_dict()
    assert data["kv_cache_config"] == {
        "tokens_per_block": 32,
        "free_gpu_memory_fraction": 0.9,
        "max_tokens": None,
        "dtype": "auto",
        "mamba_ssm_cache_dtype": "float32",
    }
    assert LlmArgs.model_validate(data).to_dict() == data
    assert LlmArgs(**data).to_dict() == data


def test_model_validate_and_nested_use_apply_the_layers_too():
    from pydantic import BaseModel

    class Experiment(BaseModel):
        args: LlmArgs

    for args in (
        LlmArgs.model_validate({"max_seq_len": 4096}),
        Experiment.model_validate({"args": {"max_seq_len": 4096}}).args,
    ):
        assert list(args.transforms)[0] == "_test_cfg_dummy_a"  # default.yaml applied
        assert args.max_num_tokens == 4096
        assert args.provenance()["max_seq_len"] == "kwargs"


# ----------------------------------------------------------------------------- errors


def test_unknown_top_level_kwarg_suggests():
    with pytest.raises(ConfigError) as info:
        LlmArgs(max_seq_lenn=5)
    text = str(info.value)
    assert "max_seq_lenn: unknown setting (from kwargs). Did you mean 'max_seq_len'?" in text
    assert "Valid top-level settings: model, model_factory" in text


def test_unknown_top_level_yaml_key_names_file_and_line(write_yaml):
    a = write_yaml("a.yaml", "max_seq_len: 5\nattn_bakend: triton\n")
    with pytest.raises(ConfigError) as info:
        LlmArgs(yaml_extra=[a])
    assert (
        "attn_bakend: unknown setting (from yaml_extra:a.yaml, line 2). "
        "Did you mean 'attn_backend'?" in str(info.value)
    )


def test_private_looking_kwargs_are_rejected():
    with pytest.raises(ConfigError, match="_env_prefix: unknown setting"):
        LlmArgs(_env_prefix="X_")


def test_unknown_nested_key_suggests(write_yaml):
    a = write_yaml("a.yaml", "kv_cache_config:\n  tokens_per_blok: 8\n")
    with pytest.raises(ConfigError) as info:
        LlmArgs(yaml_extra=[a])
    text = str(info.value)
    assert "kv_cache_config.tokens_per_blok: unknown key (from yaml_extra:a.yaml, line 2)." in text
    assert "Did you mean 'tokens_per_block'?" in text
    assert (
        "Valid keys: tokens_per_block, free_gpu_memory_fraction, max_tokens, dtype, "
        "mamba_ssm_cache_dtype." in text
    )


def test_wrong_type_names_path_value_and_source(monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_KV_CACHE_CONFIG__TOKENS_PER_BLOCK", "many")
    with pytest.raises(ConfigError) as info:
        LlmArgs(max_batch_size="lots")
    text = str(info.value)
    assert text.startswith("Invalid autodeploy configuration:")
    assert (
        "max_batch_size: Input should be a valid integer" in text
        and "(got 'lots') (from kwargs)" in text
    )
    assert (
        "kv_cache_config.tokens_per_block: Input should be a valid integer" in text
        and "(got 'many') (from env:AUTODEPLOY_KV_CACHE_CONFIG__TOKENS_PER_BLOCK)" in text
    )


def test_out_of_range_and_literal_errors():
    with pytest.raises(
        ConfigError,
        match=r"kv_cache_config\.free_gpu_memory_fraction: Input should "
        r"be less than or equal to 1 \(got 1\.5\)",
    ):
        LlmArgs(kv_cache_config={"free_gpu_memory_fraction": 1.5})
    with pytest.raises(
        ConfigError,
        match=r"dtype: Input should be 'auto', 'float32', 'float16' or "
        r"'bfloat16' \(got 'fp8'\)",
    ):
        LlmArgs(dtype="fp8")
    with pytest.raises(
        ConfigError, match=r"world_size: Input should be greater than or equal to 1"
    ):
        LlmArgs(world_size=0)


def test_missing_yaml_extra_file_is_named(tmp_path):
    with pytest.raises(ConfigError) as info:
        LlmArgs(yaml_extra=["missing.yaml"])
    text = str(info.value)
    assert "yaml_extra file 'missing.yaml' not found (listed in kwargs" in text
    assert str(tmp_path / "missing.yaml") in text


def test_bad_yaml_extra_type():
    with pytest.raises(
        ConfigError,
        match=r"yaml_extra: expected a list of file paths, got 5 "
        r"\(from kwargs\)",
    ):
        LlmArgs(yaml_extra=5)


def test_malformed_yaml_extra_names_file_and_line(write_yaml):
    a = write_yaml("a.yaml", "max_seq_len: 5\nmodel_kwargs: {a: 1\n")
    with pytest.raises(ConfigError, match=r"Malformed YAML in a\.yaml, line 3"):
        LlmArgs(yaml_extra=[a])


def test_yaml_extra_inside_a_yaml_file_is_rejected(write_yaml):
    b = write_yaml("b.yaml", "max_seq_len: 5\n")
    a = write_yaml("a.yaml", f"yaml_extra: [{b}]\n")
    with pytest.raises(ConfigError, match=r"a\.yaml, line 1: 'yaml_extra' cannot be set inside"):
        LlmArgs(yaml_extra=[a])


def test_unknown_transform_suggests_and_names_source(write_yaml):
    a = write_yaml("a.yaml", "transforms:\n  _test_cfg_dumy_a:\n    enabled: false\n")
    with pytest.raises(ConfigError) as info:
        LlmArgs(yaml_extra=[a])
    text = str(info.value)
    assert "transforms._test_cfg_dumy_a: unknown transform '_test_cfg_dumy_a'." in text
    assert "Did you mean '_test_cfg_dummy_a'" in text
    assert "(from yaml_extra:a.yaml, line 2)" in text


def test_unknown_key_inside_transform_suggests(write_yaml):
    a = write_yaml("a.yaml", "transforms:\n  _test_cfg_dummy_b:\n    backnd: x\n")
    with pytest.raises(ConfigError) as info:
        LlmArgs(yaml_extra=[a])
    text = str(info.value)
    assert "transforms._test_cfg_dummy_b.backnd: unknown key. Did you mean 'backend'?" in text
    assert "(from yaml_extra:a.yaml, line 3)" in text


def test_wrong_type_inside_transform(monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_TRANSFORMS___TEST_CFG_DUMMY_B__SIZES", '["x"]')
    with pytest.raises(ConfigError) as info:
        LlmArgs()
    text = str(info.value)
    assert "transforms._test_cfg_dummy_b.sizes.0" in text
    assert "env:AUTODEPLOY_TRANSFORMS___TEST_CFG_DUMMY_B__SIZES" in text


def test_new_transform_without_stage_is_an_error():
    with pytest.raises(ConfigError, match=r"transforms\._test_cfg_compile: missing 'stage'"):
        LlmArgs(transforms={"_test_cfg_compile": {"backend": "x"}})


def test_transform_entry_must_be_a_mapping():
    with pytest.raises(
        ConfigError,
        match=r"transforms\._test_cfg_dummy_a: Input should be a "
        r"valid dictionary \(got 5\) \(from kwargs\)",
    ):
        LlmArgs(transforms={"_test_cfg_dummy_a": 5})


def test_several_errors_are_reported_together():
    with pytest.raises(ConfigError) as info:
        LlmArgs(max_batch_size=0, dtype="fp8", kv_cache_config={"x": 1})
    text = str(info.value)
    assert "max_batch_size:" in text and "dtype:" in text and "kv_cache_config.x:" in text


def test_failed_construction_leaves_no_state_behind(monkeypatch):
    before_env = dict(os.environ)
    with pytest.raises(ConfigError):
        LlmArgs(max_seq_len=10, max_num_tokens=5)
    with pytest.raises(ConfigError):
        LlmArgs(transforms={"_nope": {"stage": "export"}})
    assert dict(os.environ) == before_env
    assert settings_module._BUILDING.get() is None
    args = LlmArgs(max_seq_len=10)
    assert args.max_num_tokens == 2048
    assert args.provenance()["max_seq_len"] == "kwargs"


# ----------------------------------------------------------------------------- model_factory


@pytest.fixture
def fake_factory_registry(monkeypatch):
    registry = Registry("model factory")
    registry.register("AutoModelForCausalLM")(object)
    registry.register("AutoModelForImageTextToText")(type("F", (), {}))
    module = types.ModuleType("autodeploy.models.factory")
    module.ModelFactoryRegistry = registry
    monkeypatch.setitem(sys.modules, "autodeploy.models.factory", module)
    return registry


def test_model_factory_is_checked_against_the_registry(fake_factory_registry):
    assert LlmArgs(model_factory="AutoModelForImageTextToText").model_factory == (
        "AutoModelForImageTextToText"
    )
    with pytest.raises(ConfigError) as info:
        LlmArgs(model_factory="AutoModelForCausalLMM")
    text = str(info.value)
    assert "model_factory: unknown model factory 'AutoModelForCausalLMM' (from kwargs)." in text
    assert "Did you mean 'AutoModelForCausalLM'" in text
    assert "Registered: AutoModelForCausalLM, AutoModelForImageTextToText." in text


def test_model_factory_check_is_skipped_without_the_factory_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "autodeploy.models.factory", None)  # import -> error
    monkeypatch.setattr(
        settings_module.importlib,
        "import_module",
        lambda name: (_ for _ in ()).throw(ModuleNotFoundError(name=name)),
    )
    assert LlmArgs(model_factory="Anything").model_factory == "Anything"


def test_model_factory_import_failure_is_a_clear_error(monkeypatch):
    def broken(name):
        raise ModuleNotFoundError("No module named 'safetensors'", name="safetensors")

    monkeypatch.setattr(settings_module.importlib, "import_module", broken)
    with pytest.raises(
        ConfigError,
        match=r"Cannot check model_factory='AutoModelForCausalLM': "
        r"importing autodeploy\.models\.factory failed",
    ):
        LlmArgs()


# ----------------------------------------------------------------------------- misc


def test_torch_dtype_is_accepted_by_name():
    import torch

    assert LlmArgs(dtype=torch.bfloat16).dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"dtype: Input should be"):
        LlmArgs(dtype=torch.int8)


def test_yaml_extra_from_env(write_yaml, monkeypatch):
    a = write_yaml("a.yaml", "max_seq_len: 100\n")
    b = write_yaml("b.yaml", "max_seq_len: 200\n")
    monkeypatch.setenv("AUTODEPLOY_YAML_EXTRA", f'["{a}", "{b}"]')
    args = LlmArgs()
    assert args.max_seq_len == 200
    assert args.provenance()["yaml_extra"] == "env:AUTODEPLOY_YAML_EXTRA"
    monkeypatch.setenv("AUTODEPLOY_YAML_EXTRA", a)  # a single path needs no JSON
    assert LlmArgs().max_seq_len == 100
    assert LlmArgs(yaml_extra=[]).max_seq_len == 2048  # kwargs replace the env list


def test_pickle_and_copy_keep_values_and_provenance():
    import copy
    import pickle

    args = LlmArgs(max_seq_len=128)
    for clone in (pickle.loads(pickle.dumps(args)), copy.deepcopy(args)):
        assert clone.to_dict() == args.to_dict()
        assert clone.provenance() == args.provenance()
