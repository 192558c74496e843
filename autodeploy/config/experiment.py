"""Experiment configuration for ``build_and_run``: ``args`` / ``prompt`` / ``benchmark``.

An experiment is one run of ``build_and_run``. Its settings come in three sections:

- ``args``: every ``LlmArgs`` setting (``model`` at the top level is a shortcut for it);
- ``prompt``: ``batch_size``, ``queries`` (strings or token-id lists), ``sp_kwargs``;
- ``benchmark``: ``enabled``, ``num``, ``isl``, ``osl``, ``bs``, ``results_path``;
- plus the flag ``dry_run``.

Files given to ``build_and_run --yaml-extra`` are *experiment files*: a file with any of the
sections holds only sections (and ``model`` / ``dry_run``); a file without sections is a plain
``LlmArgs`` file and counts as its ``args`` section, so every existing ``LlmArgs`` YAML keeps
working. Several files are deep-merged in order (a later file wins). ``--args.yaml-extra``
files are the ``LlmArgs`` ``yaml_extra`` files. Precedence, highest first:

    command line > environment (AUTODEPLOY_*) > experiment files (--yaml-extra, in order)
    > args.yaml_extra files > registry > default.yaml > field defaults

Every file is read; none replaces another. The environment sits above the experiment files, as
it sits above every YAML layer (DESIGN.md, section 6).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..utils.errors import ConfigError
from ..utils.suggest import close_matches, did_you_mean
from .layers import Layer, iter_leaves, merge_layers, yaml_file_layer

SECTIONS = ("args", "prompt", "benchmark")
TOP_LEVEL_KEYS = (*SECTIONS, "model", "dry_run")

DEFAULT_QUERIES = [
    "How big is the universe? ",
    "In simple words and a single sentence, explain the concept of gravity: ",
    "How to fix slicing in golf? ",
    "Where is the capital of Iceland? ",
    "What are the three primary colors? ",
    "Write a haiku about the sea: ",
    "The quickest way to learn a language is ",
    "Once upon a time, in a small village, ",
]
DEFAULT_SP_KWARGS: dict[str, Any] = {"max_tokens": 32, "temperature": 0.0}

Prompt = str | list[int]


class PromptConfig(BaseModel):
    """``prompt``: what to generate for."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=2, ge=1, description="Number of prompts.")
    queries: list[Prompt] | None = Field(
        default=None,
        description="Prompts (strings or token-id lists), cycled or cut to batch_size "
        "(default: built-in). A single string or a single list of ints is one prompt.",
    )
    sp_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description=f"SamplingParams fields over the defaults {DEFAULT_SP_KWARGS}.",
    )

    @field_validator("queries", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(_is_token_id(v) for v in value):
            return [value]  # one prompt given as token ids
        return value

    def prompts(self) -> list[Prompt]:
        source = self.queries or DEFAULT_QUERIES
        return list(itertools.islice(itertools.cycle(source), self.batch_size))

    def sampling_kwargs(self) -> dict[str, Any]:
        return {**DEFAULT_SP_KWARGS, **self.sp_kwargs}


class BenchmarkConfig(BaseModel):
    """``benchmark``: a timed run on random prompts."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Run the benchmark after the prompts.")
    num: int = Field(default=10, ge=1, description="Timed repetitions (after one warm-up).")
    isl: int = Field(default=2048, ge=1, description="Input sequence length (tokens).")
    osl: int = Field(default=128, ge=1, description="Output sequence length (tokens).")
    bs: int = Field(default=1, ge=1, description="Concurrent requests per repetition.")
    results_path: str | None = Field(
        default="benchmark_results.json", description="Where to write the JSON (null: nowhere)."
    )


SECTION_MODELS: dict[str, type[BaseModel]] = {"prompt": PromptConfig, "benchmark": BenchmarkConfig}


@dataclass
class ExperimentFile:
    """One ``--yaml-extra`` file split into its ``args`` layer and its other sections."""

    path: str
    args: Layer
    sections: Layer  # prompt / benchmark / dry_run, same source label
    plain: bool  # a plain LlmArgs file (no sections)


@dataclass
class ExperimentSections:
    """The merged ``prompt`` / ``benchmark`` / ``dry_run`` with the source of every value."""

    prompt: PromptConfig
    benchmark: BenchmarkConfig
    dry_run: bool
    sources: dict[str, str] = field(default_factory=dict)  # dotted path -> source


def load_experiment_file(path: str) -> ExperimentFile:
    """Read one experiment file (see the module docstring for the two forms)."""
    if not Path(path).is_file():
        raise ConfigError(
            f"--yaml-extra file {path!r} not found (looked for {Path(path).resolve()}); a "
            f"relative path is resolved against the current directory ({Path.cwd()})."
        )
    source = f"yaml_extra:{path}"
    whole = yaml_file_layer(path, source)
    values, lines = whole.values, whole.lines
    if not any(key in SECTIONS for key in values):
        empty = Layer(source, {}, {}, whole.file)
        return ExperimentFile(path, whole, empty, plain=True)
    stray = [key for key in values if key not in TOP_LEVEL_KEYS]
    if stray:
        key = stray[0]
        raise ConfigError(
            f"{path}, line {lines.get((key,), '?')}: {key!r} is not an experiment section "
            f"({', '.join(TOP_LEVEL_KEYS)}).{did_you_mean(str(key), TOP_LEVEL_KEYS)} A file "
            "with sections holds only sections: move LlmArgs settings under args:."
        )
    for key in SECTIONS:
        if key in values and not isinstance(values[key], Mapping):
            raise ConfigError(
                f"{path}, line {lines.get((key,), '?')}: section {key!r} must be a mapping, "
                f"got {values[key]!r}."
            )
    args = dict(values.get("args") or {})
    if "yaml_extra" in args:
        raise ConfigError(
            f"{path}, line {lines.get(('args', 'yaml_extra'), '?')}: args.yaml_extra cannot be "
            "set inside a file. List the files on the command line: --args.yaml-extra A B "
            "(or more experiment files with --yaml-extra)."
        )
    args_lines = {p[1:]: n for p, n in lines.items() if p[:1] == ("args",) and len(p) > 1}
    if "model" in values:
        args["model"] = values["model"]
        args_lines[("model",)] = lines.get(("model",), 0)
    rest = {k: v for k, v in values.items() if k in ("prompt", "benchmark", "dry_run")}
    rest_lines = {p: n for p, n in lines.items() if p[:1] and p[0] in rest}
    return ExperimentFile(
        path,
        Layer(source, args, args_lines, whole.file),
        Layer(source, rest, rest_lines, whole.file),
        plain=False,
    )


def resolve_sections(files: Sequence[ExperimentFile], cli: Mapping[str, Any]) -> ExperimentSections:
    """Merge the sections of ``files`` (in order) and the command line (``parse_cli`` output)."""
    wanted = ("prompt", "benchmark", "dry_run")
    cli_values = {k: cli[k] for k in wanted if k in cli and cli[k] != {}}
    layers = [f.sections for f in files] + [Layer("cli", cli_values)]
    merged, provenance = merge_layers(layers)
    configs = {}
    for name, model in SECTION_MODELS.items():
        configs[name] = _section(model, merged.get(name) or {}, name, provenance)
    sources: dict[str, str] = {}
    for name, config in configs.items():
        for leaf, _ in iter_leaves(config.model_dump(), (name,)):
            found = [src for path, src in provenance.paths.items() if path[: len(leaf)] == leaf]
            sources[".".join(leaf)] = found[-1] if found else "default"
    return ExperimentSections(
        configs["prompt"], configs["benchmark"], bool(merged.get("dry_run", False)), sources
    )


def _section(model: type[BaseModel], values: Any, name: str, provenance: Any) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {values!r}.")
    for key in values:
        if key not in model.model_fields and provenance.source((name, key)) == "cli":
            close = [f"'--{name}.{_kebab(k)}'" for k in close_matches(str(key), model.model_fields)]
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            known = ", ".join(f"--{name}.{_kebab(k)}" for k in model.model_fields)
            raise ConfigError(
                f"Unknown option '--{name}.{_kebab(str(key))}'.{hint} Known: {known}."
            )
        if key not in model.model_fields:
            raise ConfigError(
                f"{name}.{key}: unknown key{provenance.describe((name, key))}."
                f"{did_you_mean(str(key), model.model_fields)} Known: "
                f"{', '.join(model.model_fields)}."
            )
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            f"{provenance.describe((name, *err['loc'][:1]))}"
            for err in exc.errors()
        )
        raise ConfigError(f"Invalid {name} settings: {problems}.") from None


def _kebab(key: str) -> str:
    return key.replace("_", "-")


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
