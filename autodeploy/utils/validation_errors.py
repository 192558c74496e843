"""One way to turn a pydantic ``ValidationError`` into lines a person can act on.

Each line is ``<path>: <what is wrong>``: an unknown key gets close matches and the valid keys
of the model that owns it; other errors say what was expected and what was given. Callers add
where a value came from (``source``) and their own path prefix.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .suggest import did_you_mean

KeyLoc = tuple[Any, ...]


def validation_error_lines(
    exc: ValidationError, schema: type[BaseModel] | None, prefix: str = ""
) -> list[str]:
    """One line per error of ``exc`` (raised by ``schema``), paths prefixed with ``prefix``."""
    return [error_line(err, schema, prefix) for err in exc.errors()]


def error_line(
    err: ErrorDetails, schema: type[BaseModel] | None, prefix: str = "", source: str = ""
) -> str:
    """``<prefix>.<loc>: <what is wrong><source>.`` for one pydantic error of ``schema``."""
    loc = tuple(err["loc"])
    path = ".".join(str(part) for part in (*([prefix] if prefix else []), *loc))
    head = f"{path}: " if path else ""
    if err["type"] == "extra_forbidden":
        owner = model_at(schema, loc[:-1]) if schema is not None else None
        return head + unknown_key_text(str(loc[-1]), owner, source)
    cause = (err.get("ctx") or {}).get("error")
    message = str(cause) if cause is not None else err["msg"]
    return f"{head}{message} (got {err.get('input')!r}){source}."


def unknown_key_text(key: str, owner: type[BaseModel] | None, source: str = "") -> str:
    """``unknown key<source>. Did you mean ...? Valid keys: ...`` for ``key`` of ``owner``."""
    fields = list(owner.model_fields) if owner is not None else []
    valid = f" Valid keys: {', '.join(fields)}." if fields else ""
    return f"unknown key{source}.{did_you_mean(key, fields)}{valid}"


def model_at(schema: type[BaseModel], loc: KeyLoc) -> type[BaseModel] | None:
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
