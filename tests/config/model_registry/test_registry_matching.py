"""Architecture matching: patterns vs HF configs built here; most specific wins, ties, strict."""

from __future__ import annotations

import json

import pytest
import transformers
from tiny_models import tiny_config

from autodeploy.config import LlmArgs
from autodeploy.config.model_registry import (
    ArchitecturePattern,
    RegistryEntry,
    load_registry,
    match_architecture,
    pattern_matches,
    resolve_registry,
)
from autodeploy.config.model_registry.loader import PACKAGE_DIR
from autodeploy.utils.errors import ConfigError


def pattern(**values) -> ArchitecturePattern:
    return ArchitecturePattern(**values)


def entries(*specs: tuple[str, dict], config_ids: dict[str, str] | None = None):
    """RegistryEntry objects in this order (as the loader numbers them)."""
    out = []
    for index, (name, architecture) in enumerate(specs):
        config_id = (config_ids or {}).get(name + f"#{index}", "default")
        entry = RegistryEntry(
            name=name, config_id=config_id, yaml_extra=["a.yaml"], architecture=architecture
        )
        entry._index = index
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- one pattern


def test_model_type_alone_matches_any_config_of_that_type():
    config = tiny_config("qwen2")
    assert pattern_matches(pattern(model_type="qwen2"), config)
    assert not pattern_matches(pattern(model_type="llama"), config)


def test_every_named_attribute_must_exist_and_be_equal():
    config = tiny_config("llama", num_hidden_layers=3)
    assert pattern_matches(pattern(model_type="llama", num_hidden_layers=3, hidden_size=64), config)
    assert not pattern_matches(pattern(model_type="llama", num_hidden_layers=4), config)
    assert not pattern_matches(pattern(model_type="llama", no_such_attribute=3), config)


def test_values_compare_with_their_types():
    config = tiny_config("llama", tie_word_embeddings=True)
    assert pattern_matches(pattern(model_type="llama", tie_word_embeddings=True), config)
    assert not pattern_matches(pattern(model_type="llama", tie_word_embeddings=1), config)
    assert not pattern_matches(pattern(model_type="llama", num_hidden_layers=True), config)
    assert not pattern_matches(pattern(model_type="llama", num_hidden_layers="2"), config)
    assert pattern_matches(pattern(model_type="llama", rms_norm_eps=config.rms_norm_eps), config)


def test_list_attributes_compare_as_lists():
    raw = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "eos_token_id": (2, 3)}
    assert pattern_matches(pattern(model_type="llama", architectures=["LlamaForCausalLM"]), raw)
    assert pattern_matches(pattern(model_type="llama", eos_token_id=[2, 3]), raw)
    assert not pattern_matches(pattern(model_type="llama", eos_token_id=[3, 2]), raw)


def test_nested_text_config_matches_key_by_key():
    text = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = transformers.Gemma3Config(text_config=text)
    assert pattern_matches(pattern(model_type="gemma3", text_config={"hidden_size": 64}), config)
    both = {"hidden_size": 64, "num_hidden_layers": 2}
    assert pattern_matches(pattern(model_type="gemma3", text_config=both), config)
    assert not pattern_matches(
        pattern(model_type="gemma3", text_config={"hidden_size": 65}), config
    )
    missing = {"no_such_attribute": 1}
    assert not pattern_matches(pattern(model_type="gemma3", text_config=missing), config)
    # a config without text_config does not match a text_config pattern
    flat = tiny_config("llama")
    assert not pattern_matches(pattern(model_type="llama", text_config={"hidden_size": 64}), flat)
    # the same rules on a raw config.json dict
    raw = {"model_type": "gemma3", "text_config": text}
    assert pattern_matches(pattern(model_type="gemma3", text_config={"hidden_size": 64}), raw)


def test_specificity_counts_every_pinned_value():
    assert pattern(model_type="x").specificity == 1
    assert pattern(model_type="x", hidden_size=1, vocab_size=2).specificity == 3
    nested = pattern(model_type="x", hidden_size=1, text_config={"a": 1, "b": 2})
    assert nested.specificity == 4


# ----------------------------------------------------------------------------- many entries


def test_most_specific_match_wins_whatever_the_order():
    config = tiny_config("llama")
    general = ("org/general", pattern(model_type="llama"))
    specific = ("org/specific", pattern(model_type="llama", hidden_size=64, vocab_size=256))
    middle = ("org/middle", pattern(model_type="llama", hidden_size=64))
    other = ("org/other", pattern(model_type="llama", hidden_size=64, vocab_size=999, x=1))
    for order in ([general, specific, middle, other], [other, middle, specific, general]):
        match = match_architecture(config, entries(*order))
        assert match.entry.name == "org/specific"
        assert match.specificity == 3 and match.tied_with == ()


def test_ties_go_to_the_earlier_entry_and_are_reported():
    config = tiny_config("qwen3")
    first = ("org/first", pattern(model_type="qwen3", hidden_size=64))
    second = ("org/second", pattern(model_type="qwen3", num_hidden_layers=2))
    match = match_architecture(config, entries(first, second))
    assert match.entry.name == "org/first"
    assert [e.name for e in match.tied_with] == ["org/second"]
    assert match_architecture(config, entries(second, first)).entry.name == "org/second"


def test_ties_prefer_the_requested_config_id_then_default():
    config = tiny_config("qwen3")
    same = pattern(model_type="qwen3", hidden_size=64)
    variants = entries(("org/m", same), ("org/m", same), config_ids={"org/m#0": "fast"})
    assert [e.config_id for e in variants] == ["fast", "default"]
    assert match_architecture(config, variants).entry.config_id == "default"
    assert match_architecture(config, variants, config_id="fast").entry.config_id == "fast"
    assert match_architecture(config, variants, config_id="nope") is None


def test_no_match_and_entries_without_patterns():
    config = tiny_config("phi3")
    candidates = entries(("org/a", None), ("org/b", pattern(model_type="llama")))
    assert match_architecture(config, candidates) is None


# ----------------------------------------------------------------------------- local directories


SMALL_QWEN = dict(hidden_size=64, num_hidden_layers=2, vocab_size=256)
MATCH_REGISTRY = """\
version: 1
models:
  - name: org/any-qwen3
    yaml_extra: [ws1.yaml]
    architecture: {model_type: qwen3}
  - name: org/tiny-qwen3
    yaml_extra: [ws2.yaml]
    architecture: {model_type: qwen3, hidden_size: 64, num_hidden_layers: 2, vocab_size: 256}
  - name: org/new-arch
    yaml_extra: [ws4.yaml]
    architecture: {model_type: my_new_arch, hidden_size: 3, text_config: {num_layers: 1}}
  - name: org/mamba
    yaml_extra: [ws4.yaml]
    architecture: {model_type: phi3}
    disabled_reason: needs a feature that is not built yet
"""
WS = {f"ws{n}.yaml": f"world_size: {n}\n" for n in (1, 2, 4)}


@pytest.fixture
def match_registry(make_registry):
    return make_registry(MATCH_REGISTRY, WS)


def test_local_directory_is_recognized_by_its_config(match_registry, tmp_path):
    tiny_config("qwen3", **SMALL_QWEN).save_pretrained(tmp_path / "ckpt")
    args = LlmArgs(model=str(tmp_path / "ckpt"), use_registry=True)
    assert args.world_size == 2
    assert args.provenance()["world_size"] == "registry:ws2.yaml"
    plan = resolve_registry(args)
    assert plan.entry.name == "org/tiny-qwen3"
    assert plan.selection.matched_by == "architecture"
    assert plan.selection.model_dir == tmp_path / "ckpt"
    # a bigger qwen3 only matches the general pattern
    tiny_config("qwen3", hidden_size=128).save_pretrained(tmp_path / "other")
    assert LlmArgs(model=str(tmp_path / "other"), use_registry=True).world_size == 1


def test_config_transformers_does_not_know_is_matched_as_raw_json(match_registry, tmp_path):
    directory = tmp_path / "new"
    directory.mkdir()
    raw = {"model_type": "my_new_arch", "hidden_size": 3, "text_config": {"num_layers": 1}}
    (directory / "config.json").write_text(json.dumps(raw))
    assert LlmArgs(model=str(directory), use_registry=True).world_size == 4


def test_no_match_warns_that_nothing_was_applied(match_registry, tmp_path, ad_logs):
    tiny_config("llama").save_pretrained(tmp_path / "llama")
    args = LlmArgs(model=str(tmp_path / "llama"), use_registry=True)
    assert args.layer_sources() == ["default.yaml", "kwargs"]
    warnings = [r.getMessage() for r in ad_logs.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert (
        "no entry matches" in warnings[0] and "Nothing from the registry was applied" in warnings[0]
    )
    assert "No entry has model_type 'llama'" in warnings[0]


def test_strict_registry_turns_no_match_into_an_error(match_registry, tmp_path):
    tiny_config("qwen2").save_pretrained(tmp_path / "qwen2")
    with pytest.raises(ConfigError, match="no entry matches .* strict_registry=True makes this"):
        LlmArgs(model=str(tmp_path / "qwen2"), use_registry=True, strict_registry=True)


def test_disabled_entry_warns_or_fails_in_strict_mode(match_registry, tmp_path, ad_logs):
    tiny_config("phi3").save_pretrained(tmp_path / "phi3")
    args = LlmArgs(model=str(tmp_path / "phi3"), use_registry=True)
    assert args.world_size == 4  # applied anyway
    warnings = [r.getMessage() for r in ad_logs.records if r.levelname == "WARNING"]
    assert any(
        "'org/mamba' is disabled: needs a feature that is not built yet" in w for w in warnings
    )
    with pytest.raises(ConfigError, match="is disabled: needs a feature .* strict_registry=True"):
        LlmArgs(model=str(tmp_path / "phi3"), use_registry=True, strict_registry=True)


def test_builtin_model_is_matched_by_architecture(match_registry, ad_logs):
    args = LlmArgs(model="builtin:tiny-llama", use_registry=True)  # a llama: no entry here
    assert args.layer_sources() == ["default.yaml", "kwargs"]
    assert any("'builtin:tiny-llama'" in r.getMessage() for r in ad_logs.records)


def test_shipped_registry_recognizes_a_local_copy_of_a_known_checkpoint(tmp_path, monkeypatch):
    """A directory with Llama-3.1-8B's shapes (config only) is that entry, default variant."""
    from autodeploy.config.model_registry import loader

    monkeypatch.setattr(loader, "REGISTRY_DIR", PACKAGE_DIR)
    entry = load_registry().lookup("meta-llama/Llama-3.1-8B-Instruct")
    shapes = entry.architecture.attributes
    transformers.LlamaConfig(num_attention_heads=32, **shapes).save_pretrained(tmp_path / "l8b")
    args = LlmArgs(model=str(tmp_path / "l8b"), use_registry=True)
    plan = resolve_registry(args)
    assert (plan.entry.name, plan.entry.config_id) == (entry.name, "default")
    assert [e.config_id for e in plan.selection.tied_with] == ["single_gpu"]
    assert args.layer_sources()[1:4] == [f"registry:{f}" for f in entry.yaml_extra]
    single = LlmArgs(
        model=str(tmp_path / "l8b"), use_registry=True, registry_config_id="single_gpu"
    )
    assert single.world_size == 1
