"""Configuration error messages: what is wrong, at which key path, set where, and how to fix it."""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from ..utils.errors import ConfigError
from ..utils.suggest import did_you_mean
from .layers import Provenance

HEADER = "Invalid autodeploy configuration:"
_ENV_JSON_HINT = (
    " Environment values for lists and mappings are JSON, e.g. '[1, 2]' or '{\"key\": 1}'."
)


def check_top_level_keys(
    merged: Mapping[str, Any], provenance: Provenance, schema: type[BaseModel]
) -> None:
    """Every top-level key must be a field of ``schema``; name the layer that set a wrong one."""
    fields = list(schema.model_fields)
    lines = [
        f"{key}: unknown setting{provenance.describe((key,))}.{did_you_mean(str(key), fields)}"
        for key in merged
        if key not in schema.model_fields
    ]
    if lines:
        raise ConfigError(_join(lines) + f"\nValid top-level settings: {', '.join(fields)}.")


def describe_validation_error(
    exc: ValidationError, provenance: Provenance, schema: type[BaseModel]
) -> ConfigError:
    """One ConfigError listing every problem in ``exc`` with its path, source and a fix."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(part) for part in loc)
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):  # raised by our own validators: already complete
            if not loc:
                return cause
            text = str(cause)
            lines.append(text if text.startswith(f"{path}:") else f"{path}: {text}")
            continue
        source = provenance.describe(loc)
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            model = model_at(schema, loc[:-1])
            fields = list(model.model_fields) if model else []
            valid = f" Valid keys: {', '.join(fields)}." if fields else ""
            lines.append(f"{path}: unknown key{source}.{did_you_mean(key, fields)}{valid}")
            continue
        message = str(cause) if cause is not None else err["msg"]
        hint = _ENV_JSON_HINT if "from env:" in source and err["type"].endswith("_type") else ""
        prefix = f"{path}: " if path else ""
        lines.append(f"{prefix}{message} (got {err.get('input')!r}){source}.{hint}")
    return ConfigError(_join(lines))


def annotate_transform_error(exc: ConfigError, provenance: Provenance) -> ConfigError:
    """Add the source of each ``transforms.<name>...: problem`` line of a transform error."""
    out = []
    for line in str(exc).split("\n"):
        match = re.match(r"^(\s*)(transforms(?:\.[\w\-]+)*): ", line)
        if match:
            path = tuple(match.group(2).split("."))
            line = f"{line.rstrip()}{provenance.describe(path)}"
        out.append(line)
    return ConfigError("\n".join(out))


def model_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class found at key path ``loc`` below ``schema`` (None if not a model)."""
    current: Any = schema
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        current = _model_in(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    """``X`` for ``X`` or ``X | None`` where X is a model class; otherwise the annotation."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _join(lines: list[str]) -> str:
    return HEADER + "\n  " + "\n  ".join(lines)
