"""Upstream (TensorRT-LLM AutoDeploy) keys: mapped onto ours, or reported as not used."""

from __future__ import annotations

import re

import pytest

from autodeploy.config import LlmArgs, format_resolved_config
from autodeploy.config.upstream import capture_sizes_up_to
from autodeploy.utils.errors import ConfigError


def notes_of(args: LlmArgs) -> dict[str, str]:
    return {note.key: note.describe() for note in args.upstream_notes()}


def test_tensor_parallel_size_becomes_world_size_with_its_file_as_source(write_yaml):
    path = write_yaml("world_size_2.yaml", "tensor_parallel_size: 2\n")
    args = LlmArgs(yaml_extra=[path])
    assert args.world_size == 2
    assert args.provenance()["world_size"] == f"yaml_extra:{path}"
    assert "mapped to world_size=2" in notes_of(args)["tensor_parallel_size"]


def test_tensor_parallel_size_and_world_size_that_disagree_are_an_error(write_yaml):
    path = write_yaml("both.yaml", "tensor_parallel_size: 2\nworld_size: 4\n")
    with pytest.raises(ConfigError, match="tensor_parallel_size=2 and world_size=4 disagree"):
        LlmArgs(yaml_extra=[path])


@pytest.mark.parametrize(
    "section, expected",
    [
        ("{batch_sizes: [4, 1, 2]}", [1, 2, 4]),
        ("{max_batch_size: 8}", [1, 2, 4, 8]),
        ("{max_batch_size: 12, enable_padding: true}", [1, 2, 4, 8, 12]),
        ("{batch_sizes: [1, 16], max_batch_size: 16}", [1, 16]),
    ],
)
def test_cuda_graph_config_becomes_cuda_graph_batch_sizes(write_yaml, section, expected):
    path = write_yaml("graphs.yaml", f"cuda_graph_config: {section}\n")
    args = LlmArgs(yaml_extra=[path])
    assert args.cuda_graph_batch_sizes == expected
    assert args.provenance()["cuda_graph_batch_sizes"] == f"yaml_extra:{path}"
    assert all(note.used for note in args.upstream_notes())


def test_capture_sizes_up_to():
    assert capture_sizes_up_to(1) == [1]
    assert capture_sizes_up_to(64) == [1, 2, 4, 8, 16, 32, 64]


def test_padding_off_and_unknown_cuda_graph_keys(write_yaml):
    args = LlmArgs(yaml_extra=[write_yaml("a.yaml", "cuda_graph_config: {enable_padding: false}")])
    assert "always pads" in notes_of(args)["cuda_graph_config.enable_padding=false"]
    with pytest.raises(ConfigError, match="cuda_graph_config.batch_size .*unknown key"):
        LlmArgs(yaml_extra=[write_yaml("b.yaml", "cuda_graph_config: {batch_size: [1]}")])


def test_runtime_demollm_is_ours_trtllm_is_not_used_anything_else_is_an_error(write_yaml):
    args = LlmArgs(yaml_extra=[write_yaml("demo.yaml", "runtime: demollm\n")])
    assert notes_of(args)["runtime"].endswith("autodeploy always runs its own runtime")
    args = LlmArgs(yaml_extra=[write_yaml("trt.yaml", "runtime: trtllm\n")])
    assert "upstream key runtime=trtllm: not used by autodeploy" in notes_of(args)["runtime=trtllm"]
    with pytest.raises(ConfigError, match="runtime='pytorch'"):
        LlmArgs(yaml_extra=[write_yaml("bad.yaml", "runtime: pytorch\n")])


def test_kv_cache_block_reuse_and_fp8_dtype(write_yaml):
    path = write_yaml(
        "kv.yaml",
        "kv_cache_config:\n  enable_block_reuse: true\n  dtype: fp8\n  tokens_per_block: 16\n"
        "  mamba_ssm_cache_dtype: auto\n",
    )
    args = LlmArgs(yaml_extra=[path])
    notes = notes_of(args)
    assert (
        "prefix caching (block reuse) is not supported"
        in notes["kv_cache_config.enable_block_reuse=true"]
    )
    assert "fp8 KV cache is not implemented" in notes["kv_cache_config.dtype=fp8"]
    # mamba_ssm_cache_dtype is autodeploy's own setting too (the SSM state cache): taken as is
    assert "kv_cache_config.mamba_ssm_cache_dtype" not in notes
    assert args.kv_cache_config.mamba_ssm_cache_dtype == "auto"
    assert args.kv_cache_config.dtype == "auto" and args.kv_cache_config.tokens_per_block == 16
    off = LlmArgs(
        yaml_extra=[write_yaml("off.yaml", "kv_cache_config: {enable_block_reuse: false}")]
    )
    assert [note.used for note in off.upstream_notes()] == [True]


@pytest.mark.parametrize(
    "spelling, ours", [("TritonWithFlattenedInputs", "triton"), ("FlashInfer", "flashinfer")]
)
def test_attention_backend_spellings(write_yaml, spelling, ours):
    args = LlmArgs(yaml_extra=[write_yaml("attn.yaml", f"attn_backend: {spelling}\n")])
    assert args.attn_backend == ours
    assert args.transforms["_test_cfg_attention"]["backend"] == ours
    path = write_yaml("t.yaml", f"transforms: {{_test_cfg_attention: {{backend: {spelling}}}}}")
    assert LlmArgs(yaml_extra=[path]).transforms["_test_cfg_attention"]["backend"] == ours


def test_trtllm_attention_backend_keeps_the_pipeline_choice(write_yaml):
    args = LlmArgs(yaml_extra=[write_yaml("attn.yaml", "attn_backend: trtllm\n")])
    assert args.attn_backend == "triton"  # the test default.yaml's backend
    assert args.provenance()["attn_backend"] == "default.yaml"
    assert "not used by autodeploy" in notes_of(args)["attn_backend=trtllm"]


def test_upstream_only_transforms_and_transform_keys(write_yaml):
    path = write_yaml(
        "pipeline.yaml",
        """\
        transforms:
          fuse_trtllm_attn_quant_fp8: {enabled: true}
          insert_cached_mla_attention: {stage: cache_init, backend: flashinfer_mla}
          mlir_elementwise_fusion: {enabled: false}
          _test_cfg_dummy_b: {stage: post_export, run_per_gm: false, expect_mem_change: true}
          build_model: {stage: factory, device: meta}
          fuse_rmsnorm: {stage: post_load_fusion, rmsnorm_backend: torch}
        """,
    )
    args = LlmArgs(yaml_extra=[path])
    notes = notes_of(args)
    assert "TensorRT-LLM kernel" in notes["transforms.fuse_trtllm_attn_quant_fp8"]
    assert "needs MLA attention" in notes["transforms.insert_cached_mla_attention"]
    assert notes["transforms.mlir_elementwise_fusion.enabled=false"].endswith(
        "nothing (an upstream-only transform)"
    )
    assert "not used" in notes["transforms._test_cfg_dummy_b.run_per_gm"]
    assert "meta device" in notes["transforms.build_model.device"]
    assert "fuse_trtllm_attn_quant_fp8" not in args.transforms
    assert "run_per_gm" not in args.transforms["_test_cfg_dummy_b"]
    assert args.transforms["build_model"] == {"stage": "factory"}
    assert args.transforms["fuse_rmsnorm"]["backend"] == "torch"
    assert notes["transforms.fuse_rmsnorm.rmsnorm_backend"].endswith(
        "mapped to transforms.fuse_rmsnorm.backend=torch"
    )


def test_names_unknown_to_both_stay_errors_with_suggestions(write_yaml):
    with pytest.raises(ConfigError, match="Did you mean 'max_seq_len'"):
        LlmArgs(yaml_extra=[write_yaml("a.yaml", "max_seq_lenn: 4\n")])
    with pytest.raises(ConfigError, match="unknown transform 'fuse_trtllm_attn_quant_fp9'"):
        LlmArgs(yaml_extra=[write_yaml("b.yaml", "transforms: {fuse_trtllm_attn_quant_fp9: {}}")])
    with pytest.raises(ConfigError, match="run_per_gn"):
        LlmArgs(
            yaml_extra=[write_yaml("c.yaml", "transforms: {_test_cfg_dummy_b: {run_per_gn: 1}}")]
        )


def test_strict_turns_unused_keys_into_one_error(write_yaml):
    path = write_yaml("up.yaml", "runtime: trtllm\ntensor_parallel_size: 1\nrun_per_gm: 1\n")
    with pytest.raises(ConfigError, match="max_seq_len|run_per_gm"):
        LlmArgs(yaml_extra=[path])  # run_per_gm is a transform key, not a top-level setting
    path = write_yaml("up2.yaml", "runtime: trtllm\ntensor_parallel_size: 1\n")
    assert LlmArgs(yaml_extra=[path]).world_size == 1
    with pytest.raises(ConfigError) as info:
        LlmArgs(yaml_extra=[path], strict=True)
    assert "upstream key runtime=trtllm: not used by autodeploy" in str(info.value)
    assert "tensor_parallel_size" not in str(info.value)  # mapped keys are fine under strict


def test_keyword_arguments_are_translated_too():
    args = LlmArgs(tensor_parallel_size=1, cuda_graph_config={"batch_sizes": [2]})
    assert args.world_size == 1 and args.cuda_graph_batch_sizes == [2]
    assert args.provenance()["cuda_graph_batch_sizes"] == "kwargs"


def test_experiment_sections_in_an_llm_args_file_point_to_build_and_run(write_yaml):
    with pytest.raises(ConfigError, match="build_and_run --yaml-extra"):
        LlmArgs(yaml_extra=[write_yaml("exp.yaml", "args: {max_seq_len: 8}\n")])


def test_resolved_config_lists_the_upstream_keys(write_yaml):
    path = write_yaml("up.yaml", "tensor_parallel_size: 1\nruntime: trtllm\n")
    text = format_resolved_config(LlmArgs(yaml_extra=[path]))
    assert "# Upstream (TensorRT-LLM AutoDeploy) keys:" in text
    assert f"tensor_parallel_size (from yaml_extra:{path}): mapped to world_size=1" in text
    assert "upstream key runtime=trtllm: not used by autodeploy" in text
    assert re.search(rf"\nworld_size: 1 +# yaml_extra:{path}\n", text)


def test_build_summary_reports_each_upstream_key_once(write_yaml, ad_logs):
    from autodeploy.runtime.builder import report_upstream_keys

    path = write_yaml("up.yaml", "runtime: trtllm\ntensor_parallel_size: 1\n")
    report_upstream_keys(LlmArgs(yaml_extra=[path]))
    warnings = [r.getMessage() for r in ad_logs.records if r.levelname == "WARNING"]
    infos = [r.getMessage() for r in ad_logs.records if r.levelname == "INFO"]
    assert warnings == [
        "build summary: upstream key runtime=trtllm: not used by autodeploy (autodeploy runs "
        f"its own runtime, not TensorRT-LLM's) [yaml_extra:{path}]"
    ]
    assert any("tensor_parallel_size" in line and "mapped" in line for line in infos)
