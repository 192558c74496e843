"""Configuration error messages: what is wrong, at which key path, set where, and how to fix it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from ..utils.errors import ConfigError
from ..utils.suggest import did_you_mean
from ..utils.validation_errors import error_line
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
        line = error_line(err, schema, source=source)
        if "from env:" in source and err["type"].endswith("_type"):
            line += _ENV_JSON_HINT
        lines.append(line)
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


def _join(lines: list[str]) -> str:
    return HEADER + "\n  " + "\n  ".join(lines)
