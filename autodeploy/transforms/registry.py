"""TransformRegistry and validation of a whole ``transforms:`` mapping (settings, stages, facts)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from ..utils.errors import ConfigError
from ..utils.registry import Registry
from ..utils.suggest import did_you_mean
from ..utils.validation_errors import validation_error_lines
from .base import BaseTransform
from .facts import INPUT_FACTS, Fact
from .interface import Stages, TransformConfig
from .pipeline_check import PipelineStep, check_facts, order_within_stages


class _TransformRegistry(Registry[type[BaseTransform]]):
    def _on_register(self, name: str, obj: type[BaseTransform]) -> None:
        obj._transform_key = name

    def get_config_class(self, name: str) -> type[TransformConfig]:
        return self.get(name).get_config_class()


TransformRegistry = _TransformRegistry(
    "transform", lookup_hint="List them with `python -m autodeploy.tools.list_transforms`"
)


def parse_transform_configs(
    transforms: Mapping[str, Any], where: str = "transforms"
) -> dict[str, TransformConfig]:
    """Validate every entry of a ``transforms`` mapping; report all problems at once.

    Keeps the mapping's order (the order the merged YAML defined the keys). A transform that
    declares its stage may leave ``stage`` out; a different stage is an error.
    """
    parsed, errors = _parse(transforms, where)
    if errors:
        raise ConfigError("Invalid transform configuration:\n  " + "\n  ".join(errors))
    return parsed


def validate_pipeline(
    transforms: Mapping[str, Any],
    given: Collection[Fact] = INPUT_FACTS,
    where: str = "transforms",
) -> list[tuple[str, TransformConfig]]:
    """Parse ``transforms``, order it by stage (within a stage: the mapping's order, except that
    a provider of a fact goes before the transforms that need it) and check the declared facts
    of the whole pipeline (see ``pipeline_check``); return ``(name, config)`` in run order.

    ``given``: the input facts the caller supplies (a model factory, a cache interface). Every
    problem is reported in one ConfigError, before anything runs. A transform moved to a wrong
    stage is reported together with what would break there.
    """
    parsed, errors = _parse(transforms, where)
    by_stage = sorted(parsed.items(), key=lambda item: item[1].stage.order)
    steps = order_within_stages(
        [
            PipelineStep(name, TransformRegistry.get(name), cfg.stage, cfg.enabled)
            for name, cfg in by_stage
        ]
    )
    errors += check_facts(steps, given)
    if errors:
        raise ConfigError("Invalid transform configuration:\n  " + "\n  ".join(errors))
    return [(step.name, parsed[step.name]) for step in steps]


def _parse(
    transforms: Mapping[str, Any], where: str
) -> tuple[dict[str, TransformConfig], list[str]]:
    """Every entry that validates (with the stage the YAML asks for) and every problem found."""
    parsed: dict[str, TransformConfig] = {}
    errors: list[str] = []
    for name, raw in transforms.items():
        path = f"{where}.{name}"
        if not TransformRegistry.has(name):
            errors.append(
                f"{path}: unknown transform {name!r}."
                f"{did_you_mean(name, TransformRegistry.names())}"
            )
            continue
        transform = TransformRegistry.get(name)
        cls = transform.get_config_class()
        if isinstance(raw, TransformConfig):
            raw = raw.model_dump()
        if not isinstance(raw, Mapping):
            errors.append(f"{path}: expected a mapping of settings, got {type(raw).__name__}.")
            continue
        declared = transform.stage
        if "stage" not in raw and declared is None:
            stages = ", ".join(s.value for s in Stages)
            errors.append(f"{path}: missing 'stage' (one of: {stages}).")
            continue
        raw = {"stage": declared, **raw} if "stage" not in raw else raw
        try:
            parsed[name] = cls(**raw)
        except ValidationError as exc:
            errors.extend(validation_error_lines(exc, cls, path))
            continue
        if parsed[name].skip_on_error and not transform.optional:
            errors.append(
                f"{path}.skip_on_error: {name} is not optional: the build cannot go on without "
                "it, so it cannot be skipped when it fails. Remove `skip_on_error`."
            )
        if declared is not None and parsed[name].stage != declared:
            errors.append(
                f"{path}.stage: {name} runs in stage {declared.value!r} (declared by the "
                f"transform), not {parsed[name].stage.value!r}. Set `stage: {declared.value}` "
                "or leave `stage` out."
            )
    return parsed, errors
