"""The AutoModelForCausalLM factory: sources, config overrides, safe checkpoint loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import save_tiny, tiny_model

from autodeploy.models import ModelFactoryRegistry, builtin_names, resolve_model_dir
from autodeploy.utils.errors import ConfigError, RegistryError

Factory = ModelFactoryRegistry.get("AutoModelForCausalLM")


def materialize(factory):
    model = factory.build_model("meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    factory.load_or_random_init(model, "cpu")
    return model


def test_builtin_tiny_llama_builds_with_a_tokenizer_and_no_download():
    assert "tiny-llama" in builtin_names()
    factory = Factory("builtin:tiny-llama")
    model = materialize(factory)  # no weights shipped: random init, deterministic
    again = materialize(Factory("builtin:tiny-llama"))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    # RoPE tables are computed, not random: they survive the meta build.
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq[0] == 1.0 and torch.all(inv_freq[1:] < 1.0)
    tokenizer = factory.init_tokenizer()
    ids = tokenizer("Hello world").input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hello world"
    assert max(ids) < factory.vocab_size
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_unknown_builtin_and_missing_paths_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'builtin:tiny-llama'"):
        resolve_model_dir("builtin:tiny-lama")
    with pytest.raises(ConfigError, match="has no config.json"):
        resolve_model_dir(str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "nope.safetensors"))
    with pytest.raises(ConfigError, match="nor in the local Hugging Face cache.*does not download"):
        resolve_model_dir("some-org/some-model-that-is-not-cached")


def test_unknown_factory_suggests_close_match():
    with pytest.raises(RegistryError, match="Did you mean 'AutoModelForCausalLM'"):
        ModelFactoryRegistry.get("AutoModelForCausalLm")


def test_model_kwargs_deep_override_the_config(tmp_path):
    save_tiny(tmp_path, "llama")
    factory = Factory(
        str(tmp_path),
        model_kwargs={"num_hidden_layers": 1, "rope_parameters": {"rope_theta": 500.0}},
    )
    assert factory.model_config.num_hidden_layers == 1
    assert factory.model_config.rope_parameters["rope_theta"] == 500.0
    assert factory.model_config.rope_parameters["rope_type"] == "default"  # merged, not replaced
    assert len(factory.build_model().model.layers) == 1


def test_misspelled_model_kwarg_is_an_error_with_suggestion(tmp_path):
    save_tiny(tmp_path, "llama")
    with pytest.raises(ConfigError, match=r"model_kwargs\.num_hiden_layers.*'num_hidden_layers'"):
        _ = Factory(str(tmp_path), model_kwargs={"num_hiden_layers": 1}).model_config


def test_loads_safetensors_into_the_exact_weights(tmp_path):
    hf = save_tiny(tmp_path, "qwen2")
    model = materialize(Factory(str(tmp_path)))
    for name, tensor in hf.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, atol=0, rtol=0)


def test_loads_a_sharded_safetensors_index(tmp_path):
    hf = tiny_model("llama")
    hf.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file))
        weight_map.update({k: file for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = materialize(Factory(str(tmp_path)))
    for name, tensor in state.items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_missing_shard_is_named(tmp_path):
    tiny_model("llama").config.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "model-00002.safetensors"}})
    )
    with pytest.raises(ConfigError, match="missing: model-00002.safetensors"):
        materialize(Factory(str(tmp_path)))


def test_bin_checkpoints_load_with_weights_only(tmp_path, monkeypatch):
    hf = tiny_model("llama")
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = materialize(Factory(str(tmp_path)))
    assert seen.get("weights_only") is True
    assert torch.equal(model.lm_head.weight, hf.lm_head.weight)


def test_incomplete_checkpoint_is_an_error_not_random_weights(tmp_path):
    hf = tiny_model("llama")
    hf.config.save_pretrained(tmp_path)
    state = {k: v for k, v in hf.state_dict().items() if "layers.1.mlp" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        ConfigError,
        match=r"no values for 3 model tensors: "
        r"model\.layers\.1\.mlp\.down_proj\.weight",
    ):
        materialize(Factory(str(tmp_path)))


def test_directory_without_weights_needs_skip_loading_weights(tmp_path):
    tiny_model("llama").config.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="skip_loading_weights: true"):
        materialize(Factory(str(tmp_path)))
    model = materialize(Factory(str(tmp_path), skip_loading_weights=True))
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_dtype_auto_follows_the_checkpoint_and_can_be_forced(tmp_path):
    save_tiny(tmp_path, "llama")
    assert Factory(str(tmp_path)).torch_dtype == torch.float32
    model = materialize(Factory(str(tmp_path), dtype="bfloat16"))
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # buffers keep their dtype


def test_remote_code_is_off_by_default(tmp_path, monkeypatch):
    save_tiny(tmp_path, "llama")
    import transformers

    seen = []
    real = transformers.AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    _ = Factory(str(tmp_path)).model_config
    assert seen == [False]


def test_sharding_hints_come_from_the_hf_config(tmp_path):
    save_tiny(tmp_path, "llama")
    plan = Factory(str(tmp_path)).get_sharding_config()
    assert plan["source"] == "huggingface"
    assert plan["tp_plan"].get("layers.*.self_attn.q_proj") == "colwise"
