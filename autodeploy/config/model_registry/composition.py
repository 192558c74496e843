"""Choose the registry entry for a model and turn it into configuration layers.

With ``use_registry`` the entry for ``model`` is found

1. by name: ``model`` equals an entry's ``name`` (``registry_config_id`` picks the variant,
   default ``'default'``);
2. otherwise by architecture: the model's config (local directory, ``builtin:`` model or hub id
   in the local cache) is matched against the entries' ``architecture`` patterns
   (``matching.py``).

The entry's files become one layer each (``registry:<file>``), in the order listed, between
default.yaml and the user's ``yaml_extra`` files; its device settings for a known-good
deployment follow as one more layer (``deployment.py``). Everything the user sets (yaml_extra,
environment, keyword arguments, command line) stays above and wins.

Problems that are warnings, or errors with ``strict_registry``: no entry matches, the entry is
disabled, the resolved deployment is not a known-good one. A model that is neither a registry
name nor readable as a config is always an error (with close names).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import TypeAdapter, ValidationError

from ...utils.errors import ConfigError
from ...utils.logger import logger
from ..layers import INTERMEDIATE_LAYER_BUILDERS, Layer, LayerContext, merge_layers
from ..upstream import translate_layers
from .deployment import DeploymentCheck, check_deployment, device_layer
from .loader import MODELS_FILE, SOURCE_PREFIX, Registry, load_registry
from .matching import match_architecture, model_type_of, read_hf_config
from .schema import RegistryEntry
from .static_batching import static_batching_layer

if TYPE_CHECKING:
    from ..settings import LlmArgs


@dataclass(frozen=True)
class Selection:
    """The entry chosen for a model and how it was found."""

    entry: RegistryEntry
    matched_by: Literal["name", "architecture"]
    model_dir: Path | None = None
    specificity: int | None = None
    tied_with: tuple[RegistryEntry, ...] = ()

    def describe(self) -> str:
        if self.matched_by == "name":
            return "by name"
        pattern = self.entry.architecture.describe() if self.entry.architecture else ""
        text = f"by architecture of {self.model_dir} ({pattern}; specificity {self.specificity})"
        if self.tied_with:
            others = ", ".join(repr(e.label) for e in self.tied_with)
            text += (
                f"; tied with {others} (ties: the requested or 'default' config_id first, then "
                "the order of models.yaml)"
            )
        return text


@dataclass(frozen=True)
class RegistryPlan:
    """What the registry applies for one model: entry, layers, deployment check."""

    registry: Registry
    selection: Selection
    deployment: DeploymentCheck | None  # None when the resolved values were not valid ints
    layers: tuple[Layer, ...]

    @property
    def entry(self) -> RegistryEntry:
        return self.selection.entry

    @property
    def sources(self) -> list[str]:
        return [layer.source for layer in self.layers]


@dataclass(frozen=True)
class NoMatch:
    """No entry matched ``model``'s config (its model_type, for the message)."""

    model: str
    model_type: str | None
    config_id: str | None

    def describe(self, registry: Registry) -> str:
        same_type = [
            e.label
            for e in registry.entries
            if e.architecture is not None and e.architecture.model_type == self.model_type
        ]
        if same_type:
            shown = ", ".join(same_type[:3]) + (
                f" and {len(same_type) - 3} more" if len(same_type) > 3 else ""
            )
            hint = (
                f" {len(same_type)} entries have model_type {self.model_type!r} but pin other "
                f"values ({shown}); `python -m autodeploy.tools.registry show NAME` shows a "
                "pattern."
            )
        else:
            hint = f" No entry has model_type {self.model_type!r}."
        variant = f" with config_id {self.config_id!r}" if self.config_id else ""
        return (
            f"model registry: no entry{variant} matches {self.model!r}, by name or by "
            f"architecture.{hint}"
        )


def select_entry(registry: Registry, model: str, config_id: str | None) -> Selection | NoMatch:
    """The entry for ``model`` by name, else by the architecture of its config."""
    if registry.entries_named(model):
        return Selection(registry.lookup(model, config_id), "name")
    try:
        hf_config, model_dir = read_hf_config(model)
    except ConfigError as exc:
        raise ConfigError(
            f"Model {model!r} is not in the model registry ({registry.models_path})."
            f"{registry.suggest(model)} It is not readable as a checkpoint either, so it cannot "
            f"be matched by architecture: {exc}"
        ) from None
    match = match_architecture(hf_config, registry.entries, config_id)
    if match is None:
        return NoMatch(model, model_type_of(hf_config), config_id)
    return Selection(match.entry, "architecture", model_dir, match.specificity, match.tied_with)


def build_plan(
    registry: Registry,
    selection: Selection,
    resolved: Callable[[list[Layer]], Mapping[str, Any]],
) -> RegistryPlan:
    """Layers and deployment check; ``resolved(fragments)`` gives the values in effect."""
    entry = selection.entry
    fragments = [registry.fragment_layer(file) for file in entry.files]
    if entry.world_size is not None:  # format 2.0: a first-class field over the entry's files
        values_ws = {"world_size": entry.world_size}
        fragments.append(Layer(f"{SOURCE_PREFIX}{MODELS_FILE}:world_size", values_ws))
    values = resolved(fragments)
    static = (
        static_batching_layer(entry.static_batching, values["world_size"])
        if isinstance(values.get("world_size"), int)
        else None
    )
    if static is not None:
        fragments.append(static)
        values = resolved(fragments)
    sizes = [values.get(k) for k in ("world_size", "max_seq_len", "max_batch_size")]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes):
        return RegistryPlan(registry, selection, None, tuple(fragments))  # LlmArgs reports it
    check = check_deployment(entry, *sizes)
    kv_cache = values.get("kv_cache_config")
    tokens_per_block = kv_cache.get("tokens_per_block") if isinstance(kv_cache, Mapping) else None
    if not isinstance(tokens_per_block, int) or isinstance(tokens_per_block, bool):
        tokens_per_block = _field_default_page_size()  # unset (or invalid: LlmArgs reports it)
    layer = device_layer(registry, entry, check, tokens_per_block)
    layers = (*fragments, layer) if layer is not None else tuple(fragments)
    return RegistryPlan(registry, selection, check, layers)


def registry_layers(ctx: LayerContext) -> list[Layer]:
    """The intermediate-layer builder (see ``layers.INTERMEDIATE_LAYER_BUILDERS``)."""
    chosen, _ = merge_layers(ctx.layers)  # what ctx.peek sees, merged once
    use = _as_bool(chosen.get("use_registry", False))
    strict = _as_bool(chosen.get("strict_registry", False))
    config_id = chosen.get("registry_config_id")
    config_id = config_id if isinstance(config_id, str) else None
    if not use:
        if strict or config_id:
            logger.warning(
                "strict_registry / registry_config_id have no effect without use_registry=True."
            )
        return []
    model = chosen.get("model", ctx.schema.model_fields["model"].default)
    if not isinstance(model, str):
        return []  # LlmArgs reports the bad value
    registry = load_registry()
    selection = select_entry(registry, model, config_id)
    if isinstance(selection, NoMatch):
        message = selection.describe(registry)
        if strict:
            raise ConfigError(f"{message} strict_registry=True makes this an error.")
        logger.warning("%s Nothing from the registry was applied.", message)
        return []
    plan = build_plan(registry, selection, lambda fragments: _resolved(ctx, fragments))
    _report(plan, strict)
    return list(plan.layers)


def resolve_registry(args: LlmArgs) -> RegistryPlan | None:
    """What the registry applied to ``args`` (None without use_registry or without a match)."""
    if not args.use_registry:
        return None
    registry = load_registry()
    selection = select_entry(registry, args.model, args.registry_config_id)
    if isinstance(selection, NoMatch):
        return None
    values = {
        "world_size": args.world_size,
        "max_seq_len": args.max_seq_len,
        "max_batch_size": args.max_batch_size,
        "kv_cache_config": {"tokens_per_block": args.kv_cache_config.tokens_per_block},
    }
    return build_plan(registry, selection, lambda fragments: values)


def register_registry_layers() -> None:
    """Put ``registry_layers`` into the intermediate layers (once)."""
    if registry_layers not in INTERMEDIATE_LAYER_BUILDERS:
        INTERMEDIATE_LAYER_BUILDERS.append(registry_layers)


def _resolved(ctx: LayerContext, fragments: list[Layer]) -> dict[str, Any]:
    """The merged values with the registry's files in their place, plus field defaults."""
    below = [layer for layer in ctx.layers if layer.source == "default.yaml"]
    above = [layer for layer in ctx.layers if layer.source != "default.yaml"]
    layers, _ = translate_layers([*below, *fragments, *above], ctx.schema.model_fields)
    merged, _ = merge_layers(layers)
    fields = ctx.schema.model_fields
    for key in ("world_size", "max_seq_len", "max_batch_size"):
        merged.setdefault(key, fields[key].default)
    return merged


def _field_default_page_size() -> int:
    from ..settings import KvCacheConfig

    return KvCacheConfig.model_fields["tokens_per_block"].default


def _report(plan: RegistryPlan, strict: bool) -> None:
    entry = plan.entry
    logger.info(
        "model registry: %r matched %s; applying %s",
        entry.label,
        plan.selection.describe(),
        ", ".join(plan.sources),
    )
    problems = []
    if not entry.enabled:
        problems.append(
            (
                f"model registry: entry {entry.label!r} is disabled: {entry.disabled_reason}.",
                "Its settings are applied anyway; expect the build to fail or run unoptimized.",
            )
        )
    if plan.deployment is not None and plan.deployment.known_good is False:
        problems.append(
            (
                f"model registry: {plan.deployment.describe()} for {entry.label!r}.",
                "The entry's device settings are not applied.",
            )
        )
    for problem, consequence in problems:
        if strict:
            raise ConfigError(f"{problem} strict_registry=True makes this an error.")
        logger.warning("%s %s", problem, consequence)


_BOOL = TypeAdapter(bool)


def _as_bool(value: Any) -> bool:
    """The switch as LlmArgs will read it (a value it rejects counts as off here)."""
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        return False
