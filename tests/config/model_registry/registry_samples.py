"""A small registry shared by the model registry tests (used through conftest.py)."""

# A small registry used by the composition, matching and error tests.
BASE_YAML = """\
attn_backend: triton
max_seq_len: 512
max_batch_size: 8
cuda_graph_batch_sizes: [1, 2, 4, 8]
kv_cache_config: {free_gpu_memory_fraction: 0.5, tokens_per_block: 16}
transforms:
  compile_model: {backend: torch-simple}
"""
OVER_YAML = """\
max_seq_len: 1024
cuda_graph_batch_sizes: [16]
kv_cache_config: {free_gpu_memory_fraction: 0.7}
"""
SMALL_MODELS_YAML = """\
version: 1
models:
  - name: org/plain
    yaml_extra: [base.yaml, ws2.yaml]
  - name: org/layered
    yaml_extra: [base.yaml, ws2.yaml, over.yaml]
  - name: org/layered
    config_id: alt
    yaml_extra: [base.yaml]
  - name: org/tuned
    yaml_extra: [base.yaml, ws2.yaml]
    deployments:
      - {world_size: 2, max_seq_len: 512, max_batch_size: 8}
      - {world_size: 1, max_seq_len: 512, max_batch_size: 8}
    device_settings:
      2:
        num_kv_pages: 100
        max_num_tokens: 4096
        env: {REGISTRY_TEST_FLAG: 1, REGISTRY_TEST_NAME: x}
  - name: org/broken-for-now
    yaml_extra: [base.yaml]
    disabled_reason: needs something not built yet
"""
SMALL_CONFIGS = {"base.yaml": BASE_YAML, "over.yaml": OVER_YAML, "ws2.yaml": "world_size: 2\n"}
