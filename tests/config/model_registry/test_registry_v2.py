"""Registry format 2.0 (upstream AutoDeploy's): layouts B and C, per-entry failures, check --json.

The sample registry below is written here in upstream's format (no upstream file is committed):
layout B entries (``yaml_extra`` of a dashboard baseline + ``world_size_N`` files, one of them
with ``tensor_parallel_size``), a layout C entry (``world_size``, ``ad_defaults`` in
``ad_defaults/``, ``user_configs``), and two entries that cannot compose, each for a named reason.
"""

from __future__ import annotations

import json

import pytest

from autodeploy.config import LlmArgs
from autodeploy.config.model_registry import load_registry
from autodeploy.config.model_registry.validation import check_entries
from autodeploy.tools.registry import main
from autodeploy.utils.errors import ConfigError

MODELS_V2 = """\
version: '2.0'
description: upstream-format sample
models:
- name: org/small
  config_id: default_ws_1
  yaml_extra: ['dashboard_default.yaml', 'world_size_1.yaml']
- name: org/medium
  config_id: default_ws_2
  yaml_extra: ['dashboard_default.yaml', 'world_size_2.yaml']
- name: org/medium
  config_id: chunked
  yaml_extra: ['dashboard_default.yaml', 'world_size_2.yaml', 'chunked.yaml']
- name: org/layout-c
  config_id: default_ws_4
  world_size: 4
  ad_defaults: ['ad_base.yaml']
  user_configs: ['dashboard_default.yaml', 'world_size_2.yaml']
- name: org/remote-code
  yaml_extra: ['dashboard_default.yaml', 'remote.yaml']
- name: org/vision
  yaml_extra: ['dashboard_default.yaml', 'vision.yaml']
"""
CONFIGS_V2 = {
    "dashboard_default.yaml": """\
        runtime: trtllm
        attn_backend: trtllm
        compile_backend: torch-cudagraph
        max_seq_len: 512
        max_batch_size: 8
        cuda_graph_config:
          max_batch_size: 8
        transforms:
          fuse_trtllm_attn_quant_fp8:
            enabled: true
          insert_cached_mla_attention:
            stage: cache_init
            backend: flashinfer_mla
        """,
    "world_size_1.yaml": "world_size: 1\n",
    "world_size_2.yaml": "tensor_parallel_size: 2\n",
    "chunked.yaml": """\
        max_seq_len: 8192
        max_num_tokens: 4096
        enable_chunked_prefill: true
        kv_cache_config:
          enable_block_reuse: false
          dtype: fp8
        """,
    "remote.yaml": "trust_remote_code: true\n",
    "vision.yaml": "model_factory: AutoModelForImageTextToText\n",
    "unused_bringup.yaml": "max_batch_size: 1\n",  # 2.0 registries keep bring-up files
}
AD_BASE = "transforms:\n  build_model:\n    run_per_gm: false\n"


@pytest.fixture
def registry_v2(make_registry):
    root = make_registry(MODELS_V2, CONFIGS_V2)
    (root / "ad_defaults").mkdir()
    (root / "ad_defaults" / "ad_base.yaml").write_text(AD_BASE)
    return root


def test_layout_b_maps_upstream_keys(registry_v2):
    args = LlmArgs(model="org/medium", use_registry=True, registry_config_id="default_ws_2")
    assert args.world_size == 2
    assert args.provenance()["world_size"] == "registry:world_size_2.yaml"
    assert args.cuda_graph_batch_sizes == [1, 2, 4, 8]
    assert args.attn_backend == "auto"  # trtllm is not used: the pipeline's choice stays
    unused = {note.key for note in args.upstream_notes() if not note.used}
    assert unused == {
        "runtime=trtllm",
        "attn_backend=trtllm",
        "transforms.fuse_trtllm_attn_quant_fp8",
        "transforms.insert_cached_mla_attention",
    }


def test_one_entry_for_a_name_needs_no_config_id(registry_v2):
    args = LlmArgs(model="org/small", use_registry=True)
    assert args.world_size == 1 and args.max_seq_len == 512


def test_chunked_prefill_budget_below_max_seq_len_composes(registry_v2):
    args = LlmArgs(model="org/medium", use_registry=True, registry_config_id="chunked")
    assert (args.max_seq_len, args.max_num_tokens, args.enable_chunked_prefill) == (
        8192,
        4096,
        True,
    )
    assert args.kv_cache_config.dtype == "auto"


def test_layout_c_world_size_field_wins_over_the_files(registry_v2):
    args = LlmArgs(model="org/layout-c", use_registry=True)
    assert args.world_size == 4
    assert args.provenance()["world_size"] == "registry:models.yaml:world_size"
    layers = args.layer_sources()
    assert layers.index("registry:ad_base.yaml") < layers.index("registry:dashboard_default.yaml")
    assert "transforms.build_model.run_per_gm" in {n.key for n in args.upstream_notes()}


def test_a_bad_file_fails_only_the_entries_that_list_it(registry_v2):
    registry = load_registry(registry_v2)  # loads despite remote.yaml
    assert registry.version == "2.0"
    with pytest.raises(ConfigError, match="cannot enable trust_remote_code"):
        LlmArgs(model="org/remote-code", use_registry=True)
    records = {r.name + ":" + r.config_id: r for r in check_entries(registry)}
    assert [key for key, r in records.items() if not r.ok] == [
        "org/remote-code:default",
        "org/vision:default",
    ]
    assert "trust_remote_code" in records["org/remote-code:default"].error
    assert (
        "unknown model factory 'AutoModelForImageTextToText'" in records["org/vision:default"].error
    )
    assert "runtime=trtllm" in records["org/small:default_ws_1"].not_used


def test_check_json_prints_one_record_per_entry(registry_v2, capsys):
    assert main(["--registry-dir", str(registry_v2), "check", "--json"]) == 1
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert len(records) == 6
    assert set(records[0]) == {"name", "config_id", "ok", "error", "not_used"}
    assert [r["ok"] for r in records] == [True, True, True, True, False, False]
    assert "4 of 6 entries compose" in captured.err


def test_version_2_unquoted_and_version_1_still_strict(make_registry):
    root = make_registry(
        MODELS_V2.replace("version: '2.0'", "version: 2.0"),
        {k: v for k, v in CONFIGS_V2.items() if k not in ("remote.yaml",)}
        | {"remote.yaml": "max_batch_size: 2\n"},
    )
    (root / "ad_defaults").mkdir()
    (root / "ad_defaults" / "ad_base.yaml").write_text(AD_BASE)
    assert load_registry(root).version == "2.0"
    v1 = MODELS_V2.replace("version: '2.0'", "version: 1")
    with pytest.raises(ConfigError, match="unused_bringup.yaml is not used by any entry"):
        load_registry(make_registry(v1, CONFIGS_V2))


def test_entry_may_not_mix_layouts(make_registry):
    text = MODELS_V2 + "- name: org/mixed\n  yaml_extra: [a.yaml]\n  user_configs: [b.yaml]\n"
    with pytest.raises(ConfigError, match="use either yaml_extra or ad_defaults / user_configs"):
        load_registry(make_registry(text, CONFIGS_V2))
