"""What TensorRT-LLM AutoDeploy configuration keys mean to autodeploy (data only).

Used by ``upstream.py``. A name listed here is *known*: it is either mapped onto an autodeploy
setting or reported as "upstream key X: not used by autodeploy (reason)". A name that is
neither autodeploy's nor listed here stays an error with suggestions.

Transforms and transform keys are looked up only when autodeploy has no transform (or field) of
that name: once autodeploy registers, say, ``detect_sharding``, its own config class decides.
"""

from __future__ import annotations

# Reasons, shared by many entries.
TRTLLM_KERNEL = "a TensorRT-LLM kernel; autodeploy has no TensorRT-LLM dependency"
MOE_BY_EXPORT = (
    "autodeploy's MoE layers come from an export patch (hf_moe_experts: one torch_moe op per "
    "layer), not from pattern matching"
)
DEEPSEEK_KERNELS = "a DeepSeek-specific kernel path autodeploy does not implement"
EP_BY_GRID = (
    "expert parallelism is set with transforms.detect_sharding.process_grid: {ep: E, tp: T} "
    "(1-D EP over all ranks by default)"
)
NEEDS_MLA = "needs MLA attention (not built yet)"
NEEDS_QUANT = "needs quantized checkpoints (FP8/NVFP4/INT4/MXFP4; not built yet)"
SSM_BY_EXPORT = (
    "autodeploy's Mamba-2 layers come from an export patch (mamba2_mixer), not from pattern "
    "matching"
)
NEEDS_LINEAR_ATTENTION = "needs linear-attention (delta rule) state caches (not built yet)"
NEEDS_SPEC = "needs speculative decoding (Eagle3/MTP; not built yet)"
NEEDS_VLM = "needs vision-language models (not built yet)"
MULTI_STREAM = "multi-stream CUDA overlap is not implemented"
ONNX = "ONNX export for edge runtimes is not part of autodeploy"
TRANSFORMERS_MODE = "transformers mode (no graph capture) is not part of autodeploy"
PERF_ONLY = "a performance fusion autodeploy does not implement (results are unchanged)"

# Transforms that exist only upstream -> why autodeploy does not run them.
UPSTREAM_TRANSFORMS: dict[str, str] = {
    **dict.fromkeys(
        [
            "build_and_load_factory_model",
            "transformers_replace_cached_attn",
            "load_factory_model_weights",
        ],
        TRANSFORMERS_MODE,
    ),
    **dict.fromkeys(
        ["cleanup_identity_dtype_cast", "cleanup_checks", "constant_folding"],
        "a graph cleanup autodeploy does not need (results are unchanged)",
    ),
    **dict.fromkeys(
        ["match_moe_pattern", "match_dense_moe_pattern", "match_bmm_moe_pattern"],
        MOE_BY_EXPORT,
    ),
    "multi_stream_moe": MULTI_STREAM,
    **dict.fromkeys(
        [
            "match_noaux_tc",
            "deepseek_v4_moe",
            "fuse_dsv3_router_gemm",
            "fuse_dsv3_a_gemm",
            "lower_dsv3_a_gemm",
        ],
        DEEPSEEK_KERNELS,
    ),
    **dict.fromkeys(
        [
            "insert_cached_mla_attention",
            "absorb_mla_weights",
            "fuse_rope_mla",
            "multi_stream_mla_attn",
        ],
        NEEDS_MLA,
    ),
    **dict.fromkeys(
        [
            "quantize_fp8_linear_from_config",
            "quantize_nvfp4_linear_from_config",
            "quantize_int4_linear_from_config",
            "quantize_int4_gptq_linear_from_config",
            "quantize_finegrained_fp8_linear_from_config",
            "quantize_fp8_bmm_from_config",
            "quantize_fp8_from_graph",
            "quantize_nvfp4_from_graph",
            "quantize_fp8_moe",
            "quantize_nvfp4_moe",
            "quantize_finegrained_fp8_moe",
            "quantize_mxfp4_moe",
            "match_nvfp4_swiglu_pattern",
            "fuse_fp8_gemms",
            "fuse_fp4_gemms",
            "fuse_finegrained_fp8_gemms",
            "fuse_fp8_linear",
            "fuse_nvfp4_linear",
            "fuse_finegrained_fp8_linear",
            "fuse_nvfp4_swiglu",
            "fuse_fp8_moe",
            "fuse_nvfp4_moe",
            "fuse_finegrained_fp8_moe",
            "fuse_mxfp4_moe",
            "fuse_rmsnorm_quant_fp8",
            "fuse_rmsnorm_quant_nvfp4",
            "fuse_relu2_quant_nvfp4",
            "fuse_rmsnorm_fp8_finegrained",
            "fuse_fp8_prequant_shared",
            "deepseek_v4_mxfp4",
        ],
        NEEDS_QUANT,
    ),
    **dict.fromkeys(
        [
            "fuse_trtllm_attn_quant_fp8",
            "fuse_trtllm_attention_quant_fp8",
            "fuse_rope_into_trtllm_attention",
            "fuse_rope_into_trtllm_mla",
            "fuse_allreduce_residual_rmsnorm",
            "fuse_moe_allreduce_residual_rmsnorm",
            "bypass_qk_split_for_lamport",
        ],
        TRTLLM_KERNEL,
    ),
    **dict.fromkeys(
        ["match_causal_conv", "fuse_gated_rmsnorm"],
        SSM_BY_EXPORT,
    ),
    **dict.fromkeys(
        [
            "fuse_l2norm",
            "fuse_gdn_gating",
            "insert_cached_delta_rule",
            "insert_cached_gated_delta_rule",
            "linear_attention",
        ],
        NEEDS_LINEAR_ATTENTION,
    ),
    "apply_sharding_hints": (
        "sharding hints are not implemented; give a plan with detect_sharding.manual_config.tp_plan"
    ),
    **dict.fromkeys(["detect_hidden_states_for_capture", "insert_cached_residual_add"], NEEDS_SPEC),
    **dict.fromkeys(
        [
            "initialize_mrope_delta_cache",
            "mrope_delta_cache",
            "inject_custom_attention_mask",
            "tag_vlm_mask_kind",
            "transformers_attn",
        ],
        NEEDS_VLM,
    ),
    **dict.fromkeys(["multi_stream_attn", "multi_stream_gemm"], MULTI_STREAM),
    **dict.fromkeys(
        [
            "export_to_onnx",
            "export_vision_to_onnx",
            "adapt_to_edgellm",
            "adapt_to_driveos_llm",
            "short_reshape_attention_output",
            "rewrite_embedding_to_inputs_embeds",
            "extract_embedding_to_safetensors",
            "gather_last_token_ids",
            "gather_last_logits",
            "fuse_rope_attention",
        ],
        ONNX,
    ),
    **dict.fromkeys(
        [
            "fuse_gemms_mixed_children",
            "fuse_swiglu",
            "fuse_silu_mul",
            "fuse_gelu_tanh_mul",
            "mlir_elementwise_fusion",
            "mlir_fused_add_rms_norm",
            "insert_layer_barriers",
            "sync_tied_weights",
        ],
        PERF_ONLY,
    ),
    "lora": "LoRA adapters are not supported",
    "forward_with_cached_sequence_interface": "an upstream runtime detail with no equivalent",
    "visualize_namespace": "graph pictures come from `python -m autodeploy.tools.dump_graph`",
}

# Keys every upstream transform config accepts that autodeploy's TransformConfig does not.
UPSTREAM_TRANSFORM_BASE_KEYS: dict[str, str] = {
    "run_per_gm": "autodeploy runs every transform on the one exported graph",
    "expect_mem_change": "memory deltas are always measured by autodeploy's instruments",
    "debug_visualize_dir": "per-transform dumps come from AUTODEPLOY_DUMP_GRAPHS_DIR",
}

# Upstream-only keys of transforms autodeploy also has (checked only if the field is not ours).
UPSTREAM_TRANSFORM_KEYS: dict[tuple[str, str], str] = {
    ("build_model", "device"): "autodeploy always builds on the meta device",
    ("export_to_gm", "clone_state_dict"): "autodeploy never clones the state dict on export",
    ("export_to_gm", "num_moe_experts_for_export"): (
        "autodeploy exports every MoE layer whole (one torch_moe op), whatever the expert count"
    ),
    ("match_attention_layout", "attn_layout"): "the cached backend declares its layout",
    ("match_rope_layout", "expected_layout"): "the cached backend declares its layout",
    ("load_weights", "checkpoint_device"): "weights load straight onto the model's device",
    ("compile_model", "piecewise_enabled"): "piecewise CUDA graphs are not implemented",
    ("compile_model", "num_batched_inputs"): "autodeploy finds the batched inputs itself",
    ("resize_kv_cache", "free_mem_ratio"): "use kv_cache_config.free_gpu_memory_fraction",
    ("fuse_rmsnorm", "gated_rmsnorm_backend"): "the gated RMSNorm runs its reference op",
    ("gather_logits_before_lm_head", "max_batch_size"): "sized from max_batch_size",
}

# Upstream names of keys autodeploy's transforms call differently: (transform, key) -> our key.
UPSTREAM_TRANSFORM_RENAMES: dict[tuple[str, str], str] = {
    ("fuse_rmsnorm", "rmsnorm_backend"): "backend",
}

# Top-level LLM-API keys that only TensorRT-LLM uses -> reason. A value equal to the "neutral"
# one (second element; ``...`` = none) means "nothing asked for" and is mapped silently.
UPSTREAM_TOP_LEVEL_UNUSED: dict[str, tuple[str, object]] = {
    "pipeline_parallel_size": ("pipeline parallelism is not implemented", 1),
    "context_parallel_size": ("context parallelism is not implemented", 1),
    "moe_expert_parallel_size": (EP_BY_GRID, None),
    "moe_tensor_parallel_size": (EP_BY_GRID, None),
    "moe_cluster_parallel_size": ("MoE cluster parallelism is not implemented", None),
    "enable_attention_dp": ("attention data parallelism is not implemented", False),
    "speculative_config": (NEEDS_SPEC, None),
    "speculative_model_kwargs": (NEEDS_SPEC, None),
    "max_beam_width": ("beam search is not implemented", 1),
    "disable_overlap_scheduler": ("autodeploy's scheduler does not overlap steps", ...),
    "skip_tokenizer_init": ("the tokenizer is loaded when the model has one", ...),
    "enable_iter_perf_stats": ("step statistics are always kept (llm.engine.stats)", ...),
    "print_iter_log": ("set AUTODEPLOY_LOG_LEVEL=DEBUG for per-step logs", ...),
    "backend": ("autodeploy is the backend", ...),
    "mode": ("only graph mode exists", "graph"),
    "yaml_default": ("default.yaml is autodeploy's own pipeline", ...),
    "garbage_collection_gen0_threshold": ("a TensorRT-LLM executor setting", ...),
    "scheduler_config": ("autodeploy's scheduler is FCFS continuous batching", ...),
    "sampler_type": ("autodeploy has one sampler", ...),
    "checkpoint_format": ("checkpoints are read by the model factory", ...),
    "enable_sleep": ("a TensorRT-LLM executor setting", ...),
    "draft_checkpoint_loader": (NEEDS_SPEC, None),
    "visualize": ("graph pictures come from `python -m autodeploy.tools.dump_graph`", False),
}

# Upstream-only keys of kv_cache_config -> reason (``enable_block_reuse`` and ``dtype`` have
# their own rules in upstream.py).
UPSTREAM_KV_CACHE_UNUSED: dict[str, str] = {
    "host_cache_size": "the KV cache is never offloaded to host memory",
    "onboard_blocks": "the KV cache is never offloaded to host memory",
    "max_attention_window": "sliding-window cache eviction is not implemented",
    "sink_token_length": "attention sinks are not implemented",
    "secondary_offload_min_priority": "the KV cache is never offloaded to host memory",
    "event_buffer_max_size": "KV-cache events are not emitted",
    "copy_on_partial_reuse": "prefix caching (block reuse) is not implemented",
    "use_uvm": "the KV cache lives in device memory",
}

# Attention backend spellings -> autodeploy's backend name (None: not used, with a reason).
ATTENTION_BACKEND_SPELLINGS: dict[str, str | None] = {
    "tritonwithflattenedinputs": "triton",
    "triton_paged": "triton",
    "flashinfer": "flashinfer",
    "trtllm": None,
}
TRTLLM_ATTENTION_REASON = (
    "the trtllm attention kernel is TensorRT-LLM's; the pipeline's own backend choice "
    "(default.yaml: auto) is kept"
)
