"""TransformRegistry and validation of a whole ``transforms:`` mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..utils.errors import ConfigError
from ..utils.registry import Registry
from ..utils.suggest import did_you_mean
from .base import BaseTransform
from .interface import Stages, TransformConfig


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

    Keeps the mapping's order (the order the merged YAML defined the keys).
    """
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
        cls = TransformRegistry.get_config_class(name)
        if isinstance(raw, TransformConfig):
            raw = raw.model_dump()
        if not isinstance(raw, Mapping):
            errors.append(f"{path}: expected a mapping of settings, got {type(raw).__name__}.")
            continue
        if "stage" not in raw:
            stages = ", ".join(s.value for s in Stages)
            errors.append(f"{path}: missing 'stage' (one of: {stages}).")
            continue
        try:
            parsed[name] = cls(**raw)
        except ValidationError as exc:
            errors.extend(describe_validation_error(exc, path, cls))
    if errors:
        raise ConfigError("Invalid transform configuration:\n  " + "\n  ".join(errors))
    return parsed


def describe_validation_error(
    exc: ValidationError, path: str, model_cls: type | None = None
) -> list[str]:
    """Turn a pydantic error into lines of 'path.key: what is wrong (did you mean ...)'."""
    fields = list(getattr(model_cls, "model_fields", {}) or {})
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        full = f"{path}.{loc}" if loc else path
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            lines.append(
                f"{full}: unknown key {key!r}.{did_you_mean(key, fields)} "
                f"Valid keys: {', '.join(fields)}."
            )
        else:
            lines.append(f"{full}: {err['msg']} (got {err.get('input')!r}).")
    return lines
