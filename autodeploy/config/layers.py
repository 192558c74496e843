"""Configuration layers: where values come from, how they merge, and what set each value.

Layers, lowest to highest (a later layer wins):

1. ``default.yaml`` (the pipeline, packaged next to this file),
2. intermediate layers from ``INTERMEDIATE_LAYER_BUILDERS`` (the model registry plugs in here),
3. the ``yaml_extra`` files, in the order listed,
4. the environment: ``AUTODEPLOY_<FIELD>`` and ``AUTODEPLOY_<FIELD>__<KEY>...`` for nested keys,
5. keyword arguments (``LlmArgs(...)`` / ``LLM(...)``),
6. the command line.

Merging follows OmegaConf's rules: mappings merge key by key, anything else (lists included) is
replaced whole; existing keys keep their position and new keys are appended (the order of
``transforms`` within a stage is the run order). Values are taken literally: ``${...}`` is not
interpolated.

Environment values are parsed as JSON where that succeeds (``8``, ``true``, ``[1, 2]``,
``{"a": 1}``), otherwise taken as strings; top-level string fields (``model``, ``device``, ...)
are always taken as strings. When both ``AUTODEPLOY_X`` and ``AUTODEPLOY_X__Y`` are set, the more
specific one wins.
"""

from __future__ import annotations

import copy
import enum
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from ..utils.errors import ConfigError
from ..utils.suggest import close_matches
from .yaml_loader import KeyPath, load_yaml_mapping

DEFAULT_YAML_PATH = Path(__file__).with_name("default.yaml")
ENV_PREFIX = "AUTODEPLOY_"
ENV_NESTED_DELIMITER = "__"

# AUTODEPLOY_* variables read elsewhere in the package; they are not configuration fields and are
# skipped without a warning. Code that reads a new variable adds it here (or calls
# ``register_non_config_env_var``).
NON_CONFIG_ENV_VARS: set[str] = {
    "AUTODEPLOY_LOG_LEVEL",
    "AUTODEPLOY_DUMP_GRAPHS_DIR",
    "AUTODEPLOY_VERIFY_GRAPHS",
    "AUTODEPLOY_PLUGINS",
    "AUTODEPLOY_LOG_ALL_RANKS",
}

# Keys only the caller may set: a YAML file cannot pull in further YAML files.
CALLER_ONLY_KEYS = ("yaml_extra",)


def register_non_config_env_var(name: str) -> None:
    """Declare an ``AUTODEPLOY_*`` variable that is read outside the configuration."""
    NON_CONFIG_ENV_VARS.add(name)


@dataclass
class Layer:
    """One source of values. ``source`` is its provenance label (e.g. ``yaml_extra:a.yaml``)."""

    source: str
    values: dict[str, Any]
    lines: dict[KeyPath, int] = field(default_factory=dict)  # key path -> line in the file
    file: Path | None = None


class Provenance:
    """Which layer set each leaf value, keyed by key path (a tuple of keys)."""

    def __init__(self, sources: Iterable[str] = ()):
        self.paths: dict[KeyPath, str] = {}
        self.ranks: dict[str, int] = {source: rank for rank, source in enumerate(sources)}
        self.lines: dict[tuple[str, KeyPath], int] = {}

    def rank(self, source: str | None) -> int:
        """Precedence of a source: higher wins; -1 for field defaults and derived values."""
        return self.ranks.get(source, -1) if source is not None else -1

    def source(self, path: KeyPath) -> str | None:
        """The layer that set exactly ``path`` (None when no layer did)."""
        return self.paths.get(tuple(path))

    def set(self, path: KeyPath, source: str) -> None:
        self.forget(path)
        self.paths[tuple(path)] = source

    def set_tree(self, path: KeyPath, value: Any, source: str) -> None:
        """Record ``source`` for every leaf of ``value`` placed at ``path``."""
        self.forget(path)
        for leaf_path, _ in iter_leaves(value, tuple(path)):
            self.paths[leaf_path] = source

    def forget(self, path: KeyPath) -> None:
        """Drop ``path`` and everything below it (its value was replaced)."""
        path = tuple(path)
        for known in [p for p in self.paths if p[: len(path)] == path]:
            del self.paths[known]

    def sources_near(self, path: KeyPath) -> list[str]:
        """Sources that set ``path``, something below it, or else the nearest thing above it."""
        path = tuple(path)
        below = [s for p, s in self.paths.items() if p[: len(path)] == path]
        if below:
            return list(dict.fromkeys(below))
        for cut in range(len(path) - 1, 0, -1):
            if path[:cut] in self.paths:
                return [self.paths[path[:cut]]]
        return []

    def describe(self, path: KeyPath) -> str:
        """`` (from yaml_extra:a.yaml, line 3)``-style suffix for error messages; may be empty."""
        parts = []
        for source in self.sources_near(path):
            line = self._line(source, tuple(path))
            parts.append(f"{source}, line {line}" if line else source)
        return f" (from {'; '.join(parts)})" if parts else ""

    def _line(self, source: str, path: KeyPath) -> int | None:
        for cut in range(len(path), 0, -1):
            line = self.lines.get((source, path[:cut]))
            if line is not None:
                return line
        return None


def iter_leaves(value: Any, prefix: KeyPath = ()) -> Iterable[tuple[KeyPath, Any]]:
    """Leaves of a nested mapping: scalars, lists and empty mappings, with their key paths."""
    if isinstance(value, Mapping) and value:
        for key, sub in value.items():
            yield from iter_leaves(sub, (*prefix, key))
    else:
        yield prefix, value


def to_plain(value: Any) -> Any:
    """A deep copy made of dicts, lists and scalars (models keep only the fields that were set)."""
    if isinstance(value, BaseModel):
        return to_plain(value.model_dump(exclude_unset=True))
    if isinstance(value, Mapping):
        return {to_plain(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return copy.deepcopy(value)


def deep_merge(base: Mapping[str, Any], *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge mappings, later wins (OmegaConf rules, see the module docstring). Inputs unchanged."""
    merged = to_plain(base)
    for override in overrides:
        _merge_into(merged, to_plain(override), None, ())
    return merged


def merge_layers(layers: list[Layer]) -> tuple[dict[str, Any], Provenance]:
    """Merge layers lowest first; record which layer set every leaf."""
    provenance = Provenance(layer.source for layer in layers)
    merged: dict[str, Any] = {}
    for layer in layers:
        for path, line in layer.lines.items():
            provenance.lines[(layer.source, path)] = line
        _merge_into(merged, to_plain(layer.values), (provenance, layer.source), ())
    return merged, provenance


def _merge_into(
    dst: dict, src: Mapping, record: tuple[Provenance, str] | None, prefix: KeyPath
) -> None:
    for key, value in src.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge_into(dst[key], value, record, path)
            continue
        dst[key] = value  # an existing key keeps its position; a new one is appended
        if record is not None:
            record[0].set_tree(path, value, record[1])


# ----------------------------------------------------------------------------- building layers


@dataclass
class LayerContext:
    """What a layer builder may look at. ``peek`` sees every layer except the intermediate ones."""

    schema: type[BaseModel]
    layers: list[Layer]

    def peek(self, key: str, default: Any = None) -> Any:
        """The merged value of top-level ``key`` without the intermediate layers."""
        merged, _ = merge_layers(self.layers)
        return merged.get(key, default)


LayerBuilder = Callable[[LayerContext], list[Layer]]

# Builders of the layers between default.yaml and yaml_extra, lowest first. The model registry
# appends ``registry_layers(ctx) -> list[Layer]`` here; it reads the chosen model and its own
# switches with ``ctx.peek(...)``.
INTERMEDIATE_LAYER_BUILDERS: list[LayerBuilder] = []


def build_layers(
    schema: type[BaseModel],
    kwargs: Mapping[str, Any] | None = None,
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    experiment: Iterable[Layer] = (),
) -> list[Layer]:
    """All layers, lowest first, for a settings class ``schema`` (e.g. ``LlmArgs``).

    ``experiment``: layers from experiment-level files (``build_and_run --yaml-extra``), placed
    just above the ``yaml_extra`` files (see ``experiment.py``).
    """
    environ = os.environ if environ is None else environ
    top = env_layers(schema, environ)
    if kwargs:
        top.append(Layer("kwargs", to_plain(dict(kwargs))))
    if cli:
        top.append(Layer("cli", to_plain(dict(cli))))
    base = [default_yaml_layer()]
    extra = [*yaml_extra_layers(top), *experiment]
    ctx = LayerContext(schema=schema, layers=[*base, *extra, *top])
    middle = [layer for builder in INTERMEDIATE_LAYER_BUILDERS for layer in builder(ctx)]
    return [*base, *middle, *extra, *top]


def yaml_file_layer(path: str | Path, source: str) -> Layer:
    """A layer from one YAML file; rejects keys only the caller may set."""
    values, lines = load_yaml_mapping(path, source=str(path))
    for key in CALLER_ONLY_KEYS:
        if key in values:
            raise ConfigError(
                f"{path}, line {lines.get((key,), '?')}: {key!r} cannot be set inside a YAML "
                f"file. List every file in the top-level {key} (argument, --yaml-extra or "
                f"AUTODEPLOY_{key.upper()})."
            )
    return Layer(source, values, lines, Path(path))


def default_yaml_layer() -> Layer:
    return yaml_file_layer(DEFAULT_YAML_PATH, "default.yaml")


def yaml_extra_layers(top: list[Layer]) -> list[Layer]:
    """One layer per ``yaml_extra`` file; the list comes from the env, kwargs and CLI layers."""
    files: Any = []
    listed_in = ""
    for layer in top:
        if "yaml_extra" in layer.values:
            files, listed_in = layer.values["yaml_extra"], layer.source
    files = normalize_path_list(files, "yaml_extra", listed_in)
    layers = []
    for path in files:
        if not Path(path).is_file():
            raise ConfigError(
                f"yaml_extra file {path!r} not found (listed in {listed_in}; looked for "
                f"{Path(path).resolve()}). Check the path; a relative path is resolved against "
                f"the current directory ({Path.cwd()})."
            )
        layers.append(yaml_file_layer(path, f"yaml_extra:{path}"))
    return layers


def normalize_path_list(value: Any, name: str, source: str = "") -> list[str]:
    """A path or list of paths as a list of strings; anything else is a ``ConfigError``."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [os.fspath(v) for v in value]
    where = f" (from {source})" if source else ""
    raise ConfigError(f"{name}: expected a list of file paths, got {value!r}{where}.")


def env_layers(schema: type[BaseModel], environ: Mapping[str, str]) -> list[Layer]:
    """One layer per ``AUTODEPLOY_*`` variable that names a field.

    An ``AUTODEPLOY_*`` variable that names no setting (and is not read elsewhere, see
    ``NON_CONFIG_ENV_VARS``) is a ``ConfigError`` with the close match, at every depth: a typo
    must not silently run with the default.
    """
    fields = schema.model_fields
    found: list[tuple[int, str, Layer]] = []
    unknown: list[str] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in NON_CONFIG_ENV_VARS:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)
        if parts[0] not in fields or not all(parts):
            unknown.append(
                f"Environment variable {name} is not an autodeploy setting."
                f"{_suggest_env_var(name, fields)}"
            )
            continue
        raw = environ[name]
        if len(parts) == 1 and _is_string_field(fields[parts[0]].annotation):
            value: Any = raw
        else:
            value = parse_env_value(raw)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        found.append((len(parts), name, Layer(f"env:{name}", nested)))
    if unknown:
        raise ConfigError(
            f"{' '.join(unknown)} Settings are AUTODEPLOY_<FIELD> (nested: "
            "AUTODEPLOY_<FIELD>__<KEY>); fix the name or unset the variable."
        )
    found.sort(key=lambda item: item[0])  # AUTODEPLOY_X before the more specific AUTODEPLOY_X__Y
    return [layer for _, _, layer in found]


def _suggest_env_var(name: str, fields: Iterable[str]) -> str:
    """A "did you mean" hint for an unknown variable, e.g. AUTODEPLOY_MAX_SEQ_LENN.

    Compares the part after the prefix (only the field part, for nested names).
    """
    head = name[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER)[0]
    candidates = [f.upper() for f in fields]
    candidates += [n[len(ENV_PREFIX) :] for n in NON_CONFIG_ENV_VARS if n.startswith(ENV_PREFIX)]
    found = close_matches(head, candidates)
    if not found:
        return ""
    rest = name[len(ENV_PREFIX) + len(head) :]
    return " Did you mean " + " or ".join(f"'{ENV_PREFIX}{f}{rest}'" for f in found) + "?"


def parse_env_value(raw: str) -> Any:
    """JSON if it parses (numbers, booleans, null, lists, mappings), else the string itself."""
    import json

    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _is_string_field(annotation: Any) -> bool:
    """True for ``str``, ``str | None`` and string ``Literal``s (env values taken verbatim)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(members) and all(_is_string_field(a) for a in members)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    return annotation is str
