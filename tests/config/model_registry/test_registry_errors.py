"""Every registry error: what it says, where it points, and what it suggests."""

from __future__ import annotations

import re

import pytest
from registry_samples import SMALL_CONFIGS, SMALL_MODELS_YAML

from autodeploy.config import LlmArgs
from autodeploy.config.model_registry import load_registry
from autodeploy.config.model_registry.loader import registry_dir
from autodeploy.utils.errors import ConfigError

ONE_ENTRY = """\
version: 1
models:
  - name: org/model
    yaml_extra: [base.yaml]
"""


def load_error(make_registry, models_yaml: str, configs: dict[str, str] | None = None) -> str:
    make_registry(models_yaml, {"base.yaml": "max_seq_len: 64\n"} if configs is None else configs)
    with pytest.raises(ConfigError) as info:
        load_registry()
    return str(info.value)


# ----------------------------------------------------------------------------- name lookup


def test_unknown_model_name_suggests_close_names(small_registry):
    with pytest.raises(ConfigError) as info:
        LlmArgs(model="org/layerd", use_registry=True)
    message = str(info.value)
    assert "Model 'org/layerd' is not in the model registry" in message
    assert "Did you mean 'org/layered'" in message
    assert "cannot be matched by architecture" in message  # nor a readable checkpoint


def test_close_names_compare_the_part_after_the_org(small_registry):
    with pytest.raises(ConfigError, match="Did you mean 'org/tuned'"):
        LlmArgs(model="tunedd", use_registry=True)


def test_ambiguous_name_without_default_variant_lists_config_ids(make_registry):
    make_registry(
        """\
        version: 1
        models:
          - {name: org/m, config_id: fast, yaml_extra: [base.yaml]}
          - {name: org/m, config_id: small, yaml_extra: [base.yaml]}
        """,
        {"base.yaml": "max_seq_len: 64\n"},
    )
    with pytest.raises(ConfigError) as info:
        LlmArgs(model="org/m", use_registry=True)
    message = str(info.value)
    assert "'org/m' has several registry entries and none is the 'default' one" in message
    assert "registry_config_id" in message and "config_ids: fast, small" in message
    assert LlmArgs(model="org/m", use_registry=True, registry_config_id="small").max_seq_len == 64


def test_unknown_config_id_suggests_the_known_ones(small_registry):
    with pytest.raises(ConfigError) as info:
        LlmArgs(model="org/layered", use_registry=True, registry_config_id="alt2")
    message = str(info.value)
    assert "'org/layered' has no registry entry with config_id 'alt2'" in message
    assert "Did you mean 'alt'" in message and "config_ids: default, alt" in message


def test_registry_switches_without_use_registry_warn(small_registry, ad_logs):
    LlmArgs(model="org/plain", strict_registry=True)
    assert any("no effect without use_registry" in r.getMessage() for r in ad_logs.records)


# ----------------------------------------------------------------------------- references


def test_missing_file_names_the_entry_and_line(make_registry):
    message = load_error(make_registry, ONE_ENTRY.replace("[base.yaml]", "[base.yaml, bse.yaml]"))
    assert "line 4: entry 'org/model' lists 'bse.yaml', which is not in" in message
    assert "Did you mean 'base.yaml'" in message


def test_unused_config_file_is_an_error(make_registry):
    configs = {"base.yaml": "max_seq_len: 64\n", "orphan.yaml": "world_size: 2\n"}
    message = load_error(make_registry, ONE_ENTRY, configs)
    assert "configs/orphan.yaml is not used by any entry" in message
    assert "list it under templates:" in message


def test_templates_are_exempt_but_entries_cannot_use_them(make_registry):
    configs = {"base.yaml": "max_seq_len: 64\n", "later.yaml": "transforms: {future: {}}\n"}
    with_template = ONE_ENTRY.replace("models:", "templates: {later.yaml: needs future}\nmodels:")
    make_registry(with_template, configs)
    assert load_registry().templates == {"later.yaml": "needs future"}
    message = load_error(
        make_registry, with_template.replace("[base.yaml]", "[base.yaml, later.yaml]"), configs
    )
    assert "entry 'org/model' lists 'later.yaml', which is a template (needs future)" in message


def test_missing_template_file(make_registry):
    models = ONE_ENTRY.replace("models:", "templates: {gone.yaml: why}\nmodels:")
    assert "templates: 'gone.yaml' is not in" in load_error(make_registry, models)


def test_duplicate_name_and_config_id(make_registry):
    models = ONE_ENTRY + "  - name: org/model\n    yaml_extra: [base.yaml]\n"
    message = load_error(make_registry, models)
    assert (
        "line 5: entry 'org/model' with config_id 'default' is already defined at line 3" in message
    )


def test_missing_models_yaml(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'models.yaml'} does not exist")):
        load_registry(tmp_path)


# ----------------------------------------------------------------------------- models.yaml schema


@pytest.mark.parametrize(
    "models_yaml, expected",
    [
        (
            ONE_ENTRY.replace("yaml_extra:", "yaml_extras:"),
            [
                "line 4: models[0].yaml_extras (entry 'org/model'): unknown key.",
                "Did you mean 'yaml_extra'?",
            ],
        ),
        (
            ONE_ENTRY + "    deployments: [{world_size: 1, max_seq_len: 8, max_batch: 1}]\n",
            [
                "models[0].deployments[0].max_batch (entry 'org/model'): unknown key.",
                "Did you mean 'max_batch_size'?",
            ],
        ),
        (
            ONE_ENTRY.replace("version: 1", "version: 1\nmodel: []"),
            ["line 2: model: unknown key. Did you mean 'models'?"],
        ),
        (
            ONE_ENTRY.replace("version: 1", "version: 3"),
            ["line 1: version: Input should be 1 or '2.0'"],
        ),
        (
            ONE_ENTRY + "    architecture: {hidden_size: 64}\n",
            ["models[0].architecture.model_type (entry 'org/model'): required key missing"],
        ),
        (
            ONE_ENTRY + "    architecture: {model_type: llama, rope_scaling: null}\n",
            ["rope_scaling: null cannot be matched"],
        ),
        (
            ONE_ENTRY + "    architecture: {model_type: x, text_config: {a: {b: 1}}}\n",
            ["text_config.a: expected a scalar", "only one level is allowed"],
        ),
        (
            ONE_ENTRY.replace("[base.yaml]", "[../base.yaml]"),
            ["'../base.yaml' is not a file name in configs/"],
        ),
        (
            ONE_ENTRY.replace("[base.yaml]", "[base.yaml, base.yaml]"),
            ["listed more than once: base.yaml"],
        ),
        (ONE_ENTRY.replace("[base.yaml]", "[]"), ["models[0]", "lists no files"]),
        (ONE_ENTRY + "    disabled_reason: ''\n", ["models[0].disabled_reason"]),
        (
            ONE_ENTRY + "    device_settings: {2: {max_num_tokens: 64}}\n",
            ["device_settings for world_size 2, but no deployment has that world size"],
        ),
        (
            ONE_ENTRY
            + "    deployments: [{world_size: 2, max_seq_len: 128, max_batch_size: 1}]\n"
            + "    device_settings: {2: [{max_num_tokens: 64}, {when: torch_ge_2}]}\n",
            ["device_settings[2][0] has no `when` but is not the last item"],
        ),
        (
            ONE_ENTRY
            + "    deployments:\n"
            + "      - {world_size: 2, max_seq_len: 128, max_batch_size: 1}\n"
            + "      - {world_size: 2, max_seq_len: 128, max_batch_size: 1}\n",
            ["deployment (world_size=2, max_seq_len=128, max_batch_size=1) is listed twice"],
        ),
        (
            ONE_ENTRY
            + "    deployments: [{world_size: 2, max_seq_len: 128, max_batch_size: 1}]\n"
            + "    device_settings: {2: {env: {AUTODEPLOY_MAX_SEQ_LEN: 1}}}\n",
            ["AUTODEPLOY_MAX_SEQ_LEN: AUTODEPLOY_* variables are configuration layers"],
        ),
        (
            ONE_ENTRY
            + "    deployments: [{world_size: 2, max_seq_len: 128, max_batch_size: 1}]\n"
            + "    device_settings: {2: {env: {'A-B': 1}, kv_pages: 3}}\n",
            [
                "'A-B' is not an environment variable name",
                "device_settings[2][0].kv_pages (entry 'org/model'): unknown key.",
                "Did you mean 'num_kv_pages'?",
            ],
        ),
    ],
    ids=[
        "entry-key",
        "deployment-key",
        "top-level-key",
        "version",
        "no-model-type",
        "null-attribute",
        "nested-too-deep",
        "path-in-file-name",
        "file-twice",
        "no-files",
        "empty-reason",
        "device-settings-without-deployment",
        "unconditional-device-settings-not-last",
        "deployment-twice",
        "autodeploy-env-var",
        "device-settings-keys",
    ],
)
def test_schema_errors_name_the_path(make_registry, models_yaml, expected):
    message = load_error(make_registry, models_yaml)
    assert message.startswith("Invalid model registry")
    for text in expected:
        assert text in message


def test_malformed_models_yaml(make_registry):
    message = load_error(make_registry, ONE_ENTRY + "  - name: [unclosed\n")
    assert "Malformed YAML" in message and "models.yaml, line" in message


# ----------------------------------------------------------------------------- config files


@pytest.mark.parametrize(
    "fragment, expected",
    [
        ("max_seq_lenn: 8\n", "line 1: 'max_seq_lenn' is not an autodeploy setting. Did you mean"),
        ("model: other/model\n", "'model' cannot be set by a registry file"),
        ("use_registry: false\n", "'use_registry' cannot be set by a registry file"),
        ("world_size: 2\ntrust_remote_code: true\n", "line 2: a registry file cannot enable"),
        ("yaml_extra: [x.yaml]\n", "'yaml_extra' cannot be set inside a YAML file"),
        ("max_seq_len: [unclosed\n", "Malformed YAML"),
    ],
    ids=["unknown-key", "model", "use-registry", "trust-remote-code", "yaml-extra", "malformed"],
)
def test_config_file_errors(make_registry, fragment, expected):
    message = load_error(make_registry, ONE_ENTRY, {"base.yaml": fragment})
    assert expected in message
    assert "base.yaml" in message


def test_templates_are_checked_for_their_keys_too(make_registry):
    models = ONE_ENTRY.replace("models:", "templates: {later.yaml: why}\nmodels:")
    configs = {"base.yaml": "max_seq_len: 64\n", "later.yaml": "trust_remote_code: true\n"}
    assert "cannot enable trust_remote_code" in load_error(make_registry, models, configs)


def test_trust_remote_code_false_is_allowed(make_registry):
    make_registry(ONE_ENTRY, {"base.yaml": "trust_remote_code: false\n"})
    assert not LlmArgs(model="org/model", use_registry=True).trust_remote_code


@pytest.mark.parametrize(
    "fragment, expected",
    [
        (
            "transforms:\n  compile_modle: {stage: compile}\n",
            ["compile_modle", "Did you mean 'compile_model'", "(from registry:base.yaml, line 2)"],
        ),
        (
            "transforms:\n  compile_model: {backend: torch-simple, mode: fast}\n",
            ["transforms.compile_model", "mode", "registry:base.yaml"],
        ),
        ("attn_backend: no-such-backend\n", ["no-such-backend", "registry:base.yaml"]),
        (
            "kv_cache_config: {dtype: float8}\n",
            ["kv_cache_config.dtype", "registry:base.yaml, line 1"],
        ),
    ],
    ids=["unknown-transform", "unknown-transform-key", "unknown-backend", "bad-value"],
)
def test_bad_values_in_config_files_name_the_file(make_registry, fragment, expected):
    make_registry(ONE_ENTRY, {"base.yaml": fragment})
    with pytest.raises(ConfigError) as info:
        LlmArgs(model="org/model", use_registry=True)
    for text in expected:
        assert text in str(info.value)


def test_strict_registry_rejects_an_unknown_deployment(small_registry):
    with pytest.raises(ConfigError) as info:
        LlmArgs(model="org/tuned", use_registry=True, strict_registry=True, max_batch_size=16)
    message = str(info.value)
    assert "(world_size=2, max_seq_len=512, max_batch_size=16) is not a known-good" in message
    assert "known: (world_size=2, max_seq_len=512, max_batch_size=8)" in message
    assert "strict_registry=True makes this an error" in message


def test_registry_dir_switches_the_registry(make_registry, tmp_path):
    first = make_registry(SMALL_MODELS_YAML, SMALL_CONFIGS)
    make_registry(ONE_ENTRY, {"base.yaml": "max_seq_len: 64\n"})
    with registry_dir(first):
        assert LlmArgs(model="org/plain", use_registry=True).world_size == 2
    with pytest.raises(ConfigError, match="'org/plain' is not in the model registry"):
        LlmArgs(model="org/plain", use_registry=True)


def test_invalid_switch_value_is_reported_by_llm_args(small_registry):
    with pytest.raises(ConfigError) as info:
        LlmArgs(model="org/plain", use_registry="maybe")
    assert "use_registry: Input should be a valid boolean" in str(info.value)
    assert "(got 'maybe') (from kwargs)" in str(info.value)


def test_disabled_entry_by_name(small_registry, ad_logs):
    args = LlmArgs(model="org/broken-for-now", use_registry=True)
    assert "registry:base.yaml" in args.layer_sources()
    assert any(
        "'org/broken-for-now' is disabled: needs something not built yet" in r.getMessage()
        for r in ad_logs.records
    )
    with pytest.raises(ConfigError, match="is disabled: needs something not built yet"):
        LlmArgs(model="org/broken-for-now", use_registry=True, strict_registry=True)
