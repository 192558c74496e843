"""Upstream (TensorRT-LLM AutoDeploy) configuration keys: mapped onto ours or named as unused.

Every configuration layer (default.yaml, registry files, yaml_extra files, environment, keyword
arguments, command line) is translated before the layers merge, so a mapped value keeps the
source of the file that wrote it. Only keys that are *not* autodeploy settings are touched:

- mapped (shown by ``--dry-run`` and ``args.upstream_notes()``):
  ``tensor_parallel_size`` -> ``world_size``; ``cuda_graph_config.batch_sizes`` ->
  ``cuda_graph_batch_sizes`` (``max_batch_size`` alone -> 1, 2, 4, ... up to it, plus it);
  ``runtime: demollm`` (autodeploy's runtime); ``free_mem_ratio`` ->
  ``kv_cache_config.free_gpu_memory_fraction``; ``attn_page_size`` ->
  ``kv_cache_config.tokens_per_block``; attention backend spellings ``TritonWithFlattenedInputs``
  / ``triton_paged`` -> ``triton``, ``FlashInfer`` -> ``flashinfer``; keys set to the value that
  asks for nothing (``pipeline_parallel_size: 1``, ``enable_block_reuse: false``, a disabled
  upstream-only transform, ...);
- not used (dropped, reported once in the build summary as "upstream key X: not used by
  autodeploy (reason)"; an error with ``strict``): ``runtime: trtllm``, ``attn_backend:
  trtllm``, ``kv_cache_config.enable_block_reuse: true`` (no prefix caching),
  ``kv_cache_config.dtype: fp8``, transforms only upstream has, upstream-only keys inside a
  transform's config (``run_per_gm``, ``build_model.device``, ...), and the other names in
  ``upstream_catalog.py``.

A key that is neither ours nor upstream's is left alone, so the schema reports it with
suggestions as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..utils.errors import ConfigError
from .layers import Layer
from .upstream_catalog import (
    ATTENTION_BACKEND_SPELLINGS,
    TRTLLM_ATTENTION_REASON,
    UPSTREAM_KV_CACHE_UNUSED,
    UPSTREAM_TOP_LEVEL_UNUSED,
    UPSTREAM_TRANSFORM_BASE_KEYS,
    UPSTREAM_TRANSFORM_KEYS,
    UPSTREAM_TRANSFORM_RENAMES,
    UPSTREAM_TRANSFORMS,
)

EXPERIMENT_SECTIONS = ("args", "prompt", "benchmark", "dry_run")
UPSTREAM_KV_DTYPES = ("fp8", "nvfp4", "int8")
_KV_DTYPE_REASON = "an {dtype} KV cache is not implemented; the cache uses the model dtype (auto)"


@dataclass(frozen=True)
class UpstreamNote:
    """One upstream key met in one layer: mapped (``mapped_to``) or not used (``reason``)."""

    key: str  # dotted path as the layer wrote it
    source: str  # the layer, e.g. "yaml_extra:a.yaml"
    mapped_to: str | None = None
    reason: str | None = None

    @property
    def used(self) -> bool:
        return self.mapped_to is not None

    def describe(self) -> str:
        if self.used:
            return f"upstream key {self.key} (from {self.source}): mapped to {self.mapped_to}"
        return f"upstream key {self.key}: not used by autodeploy ({self.reason}) [{self.source}]"


class _Translation:
    """Translate one layer's values; collects notes and the line of every moved key."""

    def __init__(self, layer: Layer, fields: Iterable[str]):
        self.layer = layer
        self.fields = set(fields)
        self.notes: list[UpstreamNote] = []
        self.lines = dict(layer.lines)

    def mapped(self, key: str, to: str) -> None:
        self.notes.append(UpstreamNote(key, self.layer.source, mapped_to=to))

    def unused(self, key: str, reason: str) -> None:
        self.notes.append(UpstreamNote(key, self.layer.source, reason=reason))

    def move_line(self, old: tuple[Any, ...], new: tuple[Any, ...]) -> None:
        if old in self.layer.lines:
            self.lines[new] = self.layer.lines[old]

    def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.layer.values.items():
            if key in self.fields:
                out[key] = value
            elif key in EXPERIMENT_SECTIONS:
                raise ConfigError(
                    f"{key!r} (from {self.layer.source}) is a section of an experiment file "
                    "(args / prompt / benchmark), not an LlmArgs setting. Give the file to "
                    "`python -m autodeploy.tools.build_and_run --yaml-extra FILE`, or move "
                    "the settings under args: to the top level."
                )
            else:
                self._top_level(key, value, out)
        if isinstance(out.get("kv_cache_config"), dict):
            self._kv_cache(out["kv_cache_config"])
        if "attn_backend" in out:
            self._attn_backend(out)
        if isinstance(out.get("transforms"), dict):
            self._transforms(out)
        return out

    # ------------------------------------------------------------------ top level

    def _top_level(self, key: str, value: Any, out: dict[str, Any]) -> None:
        if key == "tensor_parallel_size":
            self._set_once(out, "world_size", value, key)
        elif key == "cuda_graph_config":
            self._cuda_graph_config(value, out)
        elif key == "runtime":
            if value == "demollm":
                self.mapped(key, "nothing: autodeploy always runs its own runtime")
            elif value == "trtllm":
                self.unused(
                    f"runtime={value}", "autodeploy runs its own runtime, not TensorRT-LLM's"
                )
            else:
                raise ConfigError(
                    f"runtime={value!r} (from {self.layer.source}): upstream's runtime is "
                    "'demollm' or 'trtllm'; autodeploy runs its own runtime either way. Remove "
                    "the key."
                )
        elif key == "free_mem_ratio" and _is_fraction(value):
            out.setdefault("kv_cache_config", {})["free_gpu_memory_fraction"] = value
            self.move_line((key,), ("kv_cache_config", "free_gpu_memory_fraction"))
            self.mapped(key, f"kv_cache_config.free_gpu_memory_fraction={value}")
        elif key == "attn_page_size" and isinstance(value, int):
            out.setdefault("kv_cache_config", {})["tokens_per_block"] = value
            self.move_line((key,), ("kv_cache_config", "tokens_per_block"))
            self.mapped(key, f"kv_cache_config.tokens_per_block={value}")
        elif key in UPSTREAM_TOP_LEVEL_UNUSED:
            reason, neutral = UPSTREAM_TOP_LEVEL_UNUSED[key]
            if value is None or value == neutral:
                self.mapped(f"{key}={value}", "nothing (it asks for nothing)")
            else:
                self.unused(key, reason)
        else:
            out[key] = value  # neither ours nor upstream's: the schema reports it

    def _set_once(self, out: dict[str, Any], field: str, value: Any, key: str) -> None:
        given = self.layer.values.get(field, value)
        if given != value:
            raise ConfigError(
                f"{self.layer.source}: {key}={value!r} and {field}={given!r} disagree. "
                f"{key} is upstream's name for {field}; keep one of them."
            )
        out[field] = value
        self.move_line((key,), (field,))
        self.mapped(key, f"{field}={value}")

    def _cuda_graph_config(self, value: Any, out: dict[str, Any]) -> None:
        if value is None:
            self.unused(
                "cuda_graph_config=null",
                "CUDA graphs follow compile_backend; set compile_backend: torch-simple to run "
                "without them",
            )
            return
        if not isinstance(value, dict):
            raise ConfigError(
                f"cuda_graph_config (from {self.layer.source}): expected a mapping with "
                f"batch_sizes / max_batch_size / enable_padding, got {value!r}."
            )
        known = {"batch_sizes", "max_batch_size", "enable_padding"}
        for sub in value:
            if sub not in known:
                raise ConfigError(
                    f"cuda_graph_config.{sub} (from {self.layer.source}): unknown key. "
                    f"Known: {', '.join(sorted(known))}."
                )
        sizes = value.get("batch_sizes")
        largest = value.get("max_batch_size")
        if sizes is None and isinstance(largest, int) and largest >= 1:
            sizes = capture_sizes_up_to(largest)
        if sizes is not None:
            out["cuda_graph_batch_sizes"] = sizes
            source_key = "batch_sizes" if "batch_sizes" in value else "max_batch_size"
            self.move_line(("cuda_graph_config", source_key), ("cuda_graph_batch_sizes",))
            self.mapped(f"cuda_graph_config.{source_key}", f"cuda_graph_batch_sizes={sizes}")
        if value.get("enable_padding") is True:
            self.mapped("cuda_graph_config.enable_padding", "nothing: autodeploy always pads")
        elif value.get("enable_padding") is False:
            self.unused(
                "cuda_graph_config.enable_padding=false",
                "autodeploy always pads a decode batch up to the nearest captured size",
            )

    # ------------------------------------------------------------------ nested sections

    def _kv_cache(self, section: dict[str, Any]) -> None:
        from .settings import KvCacheConfig

        ours = KvCacheConfig.model_fields
        dtypes = _literal_values(ours["dtype"].annotation)
        for key in list(section):
            value = section[key]
            path = f"kv_cache_config.{key}"
            if key == "dtype" and value in UPSTREAM_KV_DTYPES and value not in dtypes:
                del section[key]
                self.unused(f"{path}={value}", _KV_DTYPE_REASON.format(dtype=value))
            elif key in ours:
                continue
            elif key == "enable_block_reuse":
                del section[key]
                if value:
                    self.unused(
                        f"{path}=true",
                        "prefix caching (block reuse) is not supported: every prompt is "
                        "computed in full",
                    )
                else:
                    self.mapped(f"{path}=false", "nothing: autodeploy never reuses blocks")
            elif key in UPSTREAM_KV_CACHE_UNUSED:
                del section[key]
                self.unused(path, UPSTREAM_KV_CACHE_UNUSED[key])

    def _attn_backend(self, out: dict[str, Any]) -> None:
        mapped = self._backend_name(out["attn_backend"], "attn_backend")
        if mapped is None:
            del out["attn_backend"]
        else:
            out["attn_backend"] = mapped

    def _backend_name(self, value: Any, path: str) -> Any:
        """Our name for an attention backend; None when the backend is upstream-only."""
        if not isinstance(value, str):
            return value
        known = _attention_backends()
        if value in known:
            return value
        spelled = value.lower()
        if spelled not in ATTENTION_BACKEND_SPELLINGS:
            return value  # the backend check reports it with suggestions
        target = ATTENTION_BACKEND_SPELLINGS[spelled]
        if target is None:
            self.unused(f"{path}={value}", TRTLLM_ATTENTION_REASON)
            return None
        self.mapped(f"{path}={value}", f"{path}={target}")
        return target

    def _transforms(self, out: dict[str, Any]) -> None:
        from ..transforms import TransformRegistry
        from .shortcuts import TRANSFORM_SHORTCUTS

        attention = TRANSFORM_SHORTCUTS["attn_backend"].transform
        kept: dict[str, Any] = {}
        for name, entry in out["transforms"].items():
            path = f"transforms.{name}"
            if not TransformRegistry.has(name):
                if name not in UPSTREAM_TRANSFORMS:
                    kept[name] = entry  # unknown to both: parse_transform_configs reports it
                elif isinstance(entry, dict) and entry.get("enabled") is False:
                    self.mapped(f"{path}.enabled=false", "nothing (an upstream-only transform)")
                else:
                    self.unused(path, UPSTREAM_TRANSFORMS[name])
                continue
            if not isinstance(entry, dict):
                kept[name] = entry
                continue
            fields = TransformRegistry.get_config_class(name).model_fields
            config: dict[str, Any] = {}
            for key, value in entry.items():
                if key in fields:
                    if name == attention and key == "backend":
                        value = self._backend_name(value, f"{path}.backend")
                        if value is None:
                            continue
                    config[key] = value
                elif UPSTREAM_TRANSFORM_RENAMES.get((name, key)) in fields:
                    ours = UPSTREAM_TRANSFORM_RENAMES[(name, key)]
                    config.setdefault(ours, value)  # our own key, if also given, wins
                    self.mapped(f"{path}.{key}", f"{path}.{ours}={config[ours]}")
                elif key in UPSTREAM_TRANSFORM_BASE_KEYS:
                    self.unused(f"{path}.{key}", UPSTREAM_TRANSFORM_BASE_KEYS[key])
                elif (name, key) in UPSTREAM_TRANSFORM_KEYS:
                    self.unused(f"{path}.{key}", UPSTREAM_TRANSFORM_KEYS[(name, key)])
                else:
                    config[key] = value
            kept[name] = config
        out["transforms"] = kept


def translate_layer(layer: Layer, fields: Iterable[str]) -> tuple[Layer, list[UpstreamNote]]:
    """``layer`` with upstream keys mapped or dropped (see the module docstring)."""
    translation = _Translation(layer, fields)
    values = translation.run()
    return Layer(layer.source, values, translation.lines, layer.file), translation.notes


def translate_layers(
    layers: list[Layer], fields: Iterable[str]
) -> tuple[list[Layer], list[UpstreamNote]]:
    """Translate every layer; the notes of all layers, each (key, source) once."""
    fields = list(fields)
    translated, notes = [], []
    for layer in layers:
        new_layer, layer_notes = translate_layer(layer, fields)
        translated.append(new_layer)
        notes += [n for n in layer_notes if n not in notes]
    return translated, notes


def is_upstream_top_level_key(key: str) -> bool:
    """A top-level key upstream's LlmArgs knows that is not one of ours (handled above)."""
    extra = {"tensor_parallel_size", "cuda_graph_config", "runtime", "free_mem_ratio"}
    return key in extra or key == "attn_page_size" or key in UPSTREAM_TOP_LEVEL_UNUSED


def capture_sizes_up_to(largest: int) -> list[int]:
    """CUDA-graph batch sizes for ``cuda_graph_config.max_batch_size`` alone: powers of two
    below it, then it (1, 2, 4, 8 for 8; 1, 2, 4, 8, 12 for 12)."""
    sizes, size = [], 1
    while size < largest:
        sizes.append(size)
        size *= 2
    return [*sizes, largest]


def format_upstream_notes(notes: Iterable[UpstreamNote]) -> list[str]:
    """One line per note, mapped ones first."""
    ordered = sorted(notes, key=lambda note: not note.used)
    return [note.describe() for note in ordered]


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    import typing

    return typing.get_args(annotation)


def _attention_backends() -> set[str]:
    try:
        from ..custom_ops.attention.descriptor import AttentionRegistry
    except ImportError:  # the op package is not importable here: only the spellings apply
        return set()
    names = getattr(AttentionRegistry, "names", None)
    return {"auto", *(names() if callable(names) else [])}
