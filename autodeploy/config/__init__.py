"""Configuration: the pipeline (default.yaml), user settings (LlmArgs), layers and provenance.

Layers, lowest to highest: default.yaml -> registry layers -> yaml_extra files -> AUTODEPLOY_*
environment -> keyword arguments -> command line. See ``layers.py`` for the merge rules,
``shortcuts.py`` for attn_backend/compile_backend, ``cli.py`` for the override syntax,
``experiment.py`` for build_and_run's args / prompt / benchmark files, ``upstream.py`` for keys
written for TensorRT-LLM AutoDeploy.
"""

from .cli import cli_help_text, parse_cli
from .layers import (
    INTERMEDIATE_LAYER_BUILDERS,
    NON_CONFIG_ENV_VARS,
    Layer,
    LayerContext,
    Provenance,
    build_layers,
    deep_merge,
    merge_layers,
    register_non_config_env_var,
    yaml_file_layer,
)
from .report import format_resolved_config, print_resolved_config
from .settings import KvCacheConfig, LlmArgs
from .shortcuts import TRANSFORM_SHORTCUTS, ShortcutTarget
from .yaml_loader import dump_yaml_value, load_yaml_mapping, parse_scalar, parse_yaml_text

__all__ = [
    "INTERMEDIATE_LAYER_BUILDERS",
    "NON_CONFIG_ENV_VARS",
    "TRANSFORM_SHORTCUTS",
    "KvCacheConfig",
    "Layer",
    "LayerContext",
    "LlmArgs",
    "Provenance",
    "ShortcutTarget",
    "build_layers",
    "cli_help_text",
    "deep_merge",
    "dump_yaml_value",
    "format_resolved_config",
    "load_yaml_mapping",
    "merge_layers",
    "parse_cli",
    "parse_scalar",
    "parse_yaml_text",
    "print_resolved_config",
    "register_non_config_env_var",
    "yaml_file_layer",
]
