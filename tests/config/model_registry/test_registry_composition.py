"""Composition: where the registry's layers sit, how they merge, and that the user always wins."""

from __future__ import annotations

import os

import pytest
import yaml
from registry_samples import BASE_YAML, OVER_YAML

from autodeploy.config import LlmArgs
from autodeploy.config.model_registry import (
    applied_settings,
    apply_registry_environment,
    format_applied_settings,
    load_registry,
    resolve_registry,
)

BASE = yaml.safe_load(BASE_YAML)
OVER = yaml.safe_load(OVER_YAML)


def test_without_use_registry_nothing_changes(small_registry):
    plain = LlmArgs(model="org/layered")
    assert plain.layer_sources() == ["default.yaml", "kwargs"]
    explicit_off = LlmArgs(model="org/layered", use_registry=False)
    assert explicit_off.to_dict() == {**plain.to_dict(), "use_registry": False}
    assert resolve_registry(plain) is None


def test_registry_layers_sit_between_default_yaml_and_user_layers(
    small_registry, write_yaml, monkeypatch
):
    user = write_yaml("user.yaml", "max_batch_size: 3\n")
    monkeypatch.setenv("AUTODEPLOY_DTYPE", "float16")
    args = LlmArgs(model="org/layered", use_registry=True, yaml_extra=[user])
    assert args.layer_sources() == [
        "default.yaml",
        "registry:base.yaml",
        "registry:ws2.yaml",
        "registry:over.yaml",
        f"yaml_extra:{user}",
        "env:AUTODEPLOY_DTYPE",
        "kwargs",
    ]


def test_later_file_wins_dicts_merge_lists_replace(small_registry):
    args = LlmArgs(model="org/layered", use_registry=True)
    sources = args.provenance()
    # later wins: over.yaml comes after base.yaml
    assert args.max_seq_len == OVER["max_seq_len"] != BASE["max_seq_len"]
    assert sources["max_seq_len"] == "registry:over.yaml"
    # dicts merge key by key: tokens_per_block from base.yaml survives over.yaml's fraction
    kv = args.kv_cache_config
    assert kv.tokens_per_block == BASE["kv_cache_config"]["tokens_per_block"]
    assert kv.free_gpu_memory_fraction == OVER["kv_cache_config"]["free_gpu_memory_fraction"]
    assert sources["kv_cache_config.tokens_per_block"] == "registry:base.yaml"
    assert sources["kv_cache_config.free_gpu_memory_fraction"] == "registry:over.yaml"
    # lists are replaced, not concatenated
    assert args.cuda_graph_batch_sizes == OVER["cuda_graph_batch_sizes"]
    # values no registry file sets keep their earlier source
    assert args.world_size == 2 and sources["world_size"] == "registry:ws2.yaml"
    assert args.max_batch_size == BASE["max_batch_size"]
    assert sources["transforms.build_model.stage"] == "default.yaml"


@pytest.mark.parametrize("layer", ["yaml_extra", "env", "kwargs", "cli"])
def test_every_user_layer_beats_the_registry(small_registry, write_yaml, monkeypatch, layer):
    kwargs = {"model": "org/layered", "use_registry": True}
    cli = {}
    if layer == "yaml_extra":
        kwargs["yaml_extra"] = [write_yaml("mine.yaml", "max_seq_len: 77\nworld_size: 1\n")]
        expected_source = "yaml_extra:mine.yaml"
    elif layer == "env":
        monkeypatch.setenv("AUTODEPLOY_MAX_SEQ_LEN", "77")
        monkeypatch.setenv("AUTODEPLOY_WORLD_SIZE", "1")
        expected_source = "env:AUTODEPLOY_MAX_SEQ_LEN"
    elif layer == "kwargs":
        kwargs.update(max_seq_len=77, world_size=1)
        expected_source = "kwargs"
    else:
        cli = {"max_seq_len": 77, "world_size": 1}
        expected_source = "cli"
    args = LlmArgs.from_cli(cli, **kwargs)
    assert (args.max_seq_len, args.world_size) == (77, 1)
    assert args.provenance()["max_seq_len"] == expected_source
    assert args.max_batch_size == BASE["max_batch_size"]  # the rest still comes from the registry


def test_user_transform_key_beats_the_registry_shortcut(small_registry):
    """The registry sets attn_backend (a shortcut); the user's transform key is higher."""
    args = LlmArgs(
        model="org/plain",
        use_registry=True,
        transforms={"insert_cached_attention": {"backend": "torch"}},
    )
    assert args.attn_backend == "torch"
    assert args.provenance()["transforms.insert_cached_attention.backend"] == "kwargs"
    registry_only = LlmArgs(model="org/plain", use_registry=True)
    assert registry_only.attn_backend == BASE["attn_backend"]
    assert (
        registry_only.provenance()["transforms.insert_cached_attention.backend"]
        == "registry:base.yaml"
    )


def test_use_registry_can_come_from_env_or_a_user_file(small_registry, write_yaml, monkeypatch):
    user = write_yaml("user.yaml", "use_registry: true\nmodel: org/plain\n")
    assert LlmArgs(yaml_extra=[user]).world_size == 2
    monkeypatch.setenv("AUTODEPLOY_USE_REGISTRY", "true")
    assert LlmArgs(model="org/plain").world_size == 2


def test_config_id_picks_the_variant(small_registry):
    default = LlmArgs(model="org/layered", use_registry=True)
    alt = LlmArgs(model="org/layered", use_registry=True, registry_config_id="alt")
    assert "registry:over.yaml" in default.layer_sources()
    assert alt.layer_sources() == ["default.yaml", "registry:base.yaml", "kwargs"]
    assert alt.world_size == 1 and default.world_size == 2


# ----------------------------------------------------------------------------- deployments


def test_known_good_deployment_gets_its_device_settings(small_registry):
    args = LlmArgs(model="org/tuned", use_registry=True)
    entry = load_registry().lookup("org/tuned")
    settings = entry.device_settings[2][0]
    source = "registry:models.yaml:device_settings[world_size=2]"
    assert args.max_num_tokens == settings.max_num_tokens
    # pages x the page size in effect (base.yaml sets tokens_per_block)
    expected_tokens = settings.num_kv_pages * BASE["kv_cache_config"]["tokens_per_block"]
    assert args.kv_cache_config.max_tokens == expected_tokens
    assert args.provenance()["max_num_tokens"] == source
    assert args.layer_sources()[-2:] == [source, "kwargs"]
    plan = resolve_registry(args)
    assert plan.deployment.known_good is True


def test_num_kv_pages_use_the_users_page_size(small_registry):
    args = LlmArgs(model="org/tuned", use_registry=True, kv_cache_config={"tokens_per_block": 64})
    assert args.kv_cache_config.max_tokens == 100 * 64


def test_user_value_beats_a_device_setting(small_registry):
    args = LlmArgs(model="org/tuned", use_registry=True, max_num_tokens=1000)
    assert args.max_num_tokens == 1000
    assert args.provenance()["max_num_tokens"] == "kwargs"


def test_deployment_without_device_settings_is_known_good_without_changes(small_registry):
    args = LlmArgs(model="org/tuned", use_registry=True, world_size=1)
    assert resolve_registry(args).deployment.known_good is True
    assert args.kv_cache_config.max_tokens is None
    assert not any(s.startswith("registry:models.yaml") for s in args.layer_sources())


def test_unknown_deployment_warns_and_skips_device_settings(small_registry, ad_logs):
    args = LlmArgs(model="org/tuned", use_registry=True, max_batch_size=16)
    assert args.kv_cache_config.max_tokens is None
    assert args.provenance()["max_num_tokens"] == "derived"
    messages = [r.getMessage() for r in ad_logs.records if r.levelname == "WARNING"]
    assert any(
        "(world_size=2, max_seq_len=512, max_batch_size=16) is not a known-good deployment" in m
        and "device settings are not applied" in m
        for m in messages
    )


def test_entry_without_deployments_makes_no_claim(small_registry, ad_logs):
    args = LlmArgs(model="org/plain", use_registry=True, max_batch_size=99)
    assert resolve_registry(args).deployment.known_good is None
    assert not [r for r in ad_logs.records if r.levelname == "WARNING"]


def test_environment_is_set_only_where_unset(small_registry):
    environ = {"REGISTRY_TEST_NAME": "mine"}
    args = LlmArgs(model="org/tuned", use_registry=True)
    records = {r.setting: r for r in apply_registry_environment(args, environ)}
    assert environ == {"REGISTRY_TEST_FLAG": "1", "REGISTRY_TEST_NAME": "mine"}  # 1 -> "1"
    flag, name = records["env:REGISTRY_TEST_FLAG"], records["env:REGISTRY_TEST_NAME"]
    assert (flag.default, flag.applied, flag.overridden) == (None, "1", False)
    assert flag.source == "registry:models.yaml:device_settings[world_size=2]"
    assert (name.default, name.proposed, name.applied) == ("mine", "x", "mine")
    assert name.source == "environment" and name.overridden


def test_environment_defaults_to_the_process_environment(small_registry, monkeypatch):
    monkeypatch.setenv("REGISTRY_TEST_FLAG", "0")  # restored (removed) after the test
    monkeypatch.setenv("REGISTRY_TEST_NAME", "x")
    monkeypatch.delenv("REGISTRY_TEST_FLAG")
    apply_registry_environment(LlmArgs(model="org/tuned", use_registry=True))
    assert os.environ["REGISTRY_TEST_FLAG"] == "1"


def test_environment_untouched_for_unknown_deployment(small_registry):
    environ: dict[str, str] = {}
    args = LlmArgs(model="org/tuned", use_registry=True, max_batch_size=16)
    assert apply_registry_environment(args, environ) == [] and environ == {}
    assert apply_registry_environment(LlmArgs(model="org/tuned"), environ) == []


# ----------------------------------------------------------------------------- summary


def test_applied_settings_record_default_applied_and_source(small_registry):
    args = LlmArgs(model="org/layered", use_registry=True, max_batch_size=5)
    records = {r.setting: r for r in applied_settings(args, resolve_registry(args))}
    baseline = LlmArgs(model="org/layered")  # the same without the registry
    seq = records["max_seq_len"]
    assert (seq.default, seq.proposed, seq.applied) == (
        baseline.max_seq_len,
        OVER["max_seq_len"],
        OVER["max_seq_len"],
    )
    assert seq.source == "registry:over.yaml" and not seq.overridden
    batch = records["max_batch_size"]
    assert (batch.default, batch.proposed, batch.applied, batch.source) == (
        baseline.max_batch_size,
        BASE["max_batch_size"],
        5,
        "kwargs",
    )
    assert batch.overridden
    attn = records["attn_backend"]
    assert attn.default == baseline.attn_backend and attn.applied == BASE["attn_backend"]
    fraction = records["kv_cache_config.free_gpu_memory_fraction"]
    assert fraction.default == baseline.kv_cache_config.free_gpu_memory_fraction
    assert records["cuda_graph_batch_sizes"].default is None
    # every value any registry file sets has a record, and nothing else
    table = format_applied_settings(list(records.values()))
    assert table.splitlines()[0].split() == ["setting", "default", "applied", "source"]
    assert "kwargs (registry proposed 8)" in table
    assert len(records) == len(table.splitlines()) - 1


def test_registry_edits_are_picked_up(small_registry):
    assert LlmArgs(model="org/plain", use_registry=True).world_size == 2
    (small_registry / "configs" / "ws2.yaml").write_text("world_size: 4\n# longer now\n")
    assert LlmArgs(model="org/plain", use_registry=True).world_size == 4
