"""Dot-notation command-line overrides shared by every tool.

::

    --model M                                   shorthand for --args.model M (any LlmArgs field)
    --yaml-extra a.yaml b.yaml                  several values make a list
    --args.model-kwargs.num-hidden-layers=2     nested keys; kebab-case becomes snake_case
    --args.transforms.export-to-gm.strict true  "--key value" and "--key=value" are the same
    --args.cuda-graph-batch-sizes=[1,2,4]       values are YAML scalars / flow collections
    --prompt.batch-size 4 --dry-run             tool-specific groups and flags, if allowed

``parse_cli(argv, groups=..., flags=...)`` returns a nested dict: ``{"args": {...}, <group>:
{...}, <flag>: value}``; ``"args"`` is always there and goes to ``LlmArgs.from_cli(...)``, which
records those values with the source "cli" (the highest layer). A flag given without a value is
``True``; a repeated option: the later one wins. Unknown options are errors with suggestions.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from ..utils.errors import ConfigError
from ..utils.suggest import close_matches
from .layers import deep_merge
from .report import format_resolved_config, print_resolved_config
from .settings import LlmArgs
from .yaml_loader import parse_scalar

ARGS_GROUP = "args"

__all__ = ["cli_help_text", "format_resolved_config", "parse_cli", "print_resolved_config"]


def parse_cli(
    argv: Sequence[str] | None = None,
    *,
    groups: Iterable[str] = (),
    flags: Iterable[str] = (),
    settings: type[BaseModel] = LlmArgs,
) -> dict[str, Any]:
    """Parse override options (see the module docstring) into a nested dict.

    ``groups``: extra top-level groups the tool accepts (``"prompt"`` allows ``--prompt.x``).
    ``flags``: plain top-level options (``"dry_run"`` allows ``--dry-run [value]``).
    ``-h``/``--help`` sets ``result["help"] = True``; print ``cli_help_text(...)`` for it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    group_names = {ARGS_GROUP, *(_snake(g) for g in groups)}
    flag_names = {_snake(f) for f in flags}
    fields = set(settings.model_fields)
    result: dict[str, Any] = {group: {} for group in sorted(group_names)}

    index = 0
    while index < len(argv):
        token = argv[index]
        index += 1
        if token in ("-h", "--help"):
            result["help"] = True
            continue
        if not token.startswith("--") or token == "--":
            raise ConfigError(
                f"Unexpected command-line argument {token!r}: options start with '--' and "
                "their values follow them (--key value or --key=value)."
            )
        name, has_inline, inline = token[2:].partition("=")
        if has_inline:
            raw_values = [inline]
        else:
            raw_values = []
            while index < len(argv) and not argv[index].startswith("--"):
                raw_values.append(argv[index])
                index += 1
        keys = [_snake(part) for part in name.split(".")]
        if not all(keys):
            raise ConfigError(f"Malformed option {token!r}: empty key between dots.")
        value = _value_of([parse_scalar(raw) for raw in raw_values])
        option = "--" + name
        path = _route(keys, option, group_names, flag_names, fields)
        nested: Any = value
        for key in reversed(path):
            nested = {key: nested}
        if len(path) == 1 and path[0] in group_names and not isinstance(value, dict):
            raise ConfigError(
                f"{option}: expected a mapping such as {{key: value}}, or use --{_kebab(path[0])}"
                ".<key> value."
            )
        result = deep_merge(result, nested)
    return result


def _route(
    keys: list[str], token: str, groups: set[str], flags: set[str], fields: set[str]
) -> list[str]:
    head = keys[0]
    if head in groups:
        if head == ARGS_GROUP and len(keys) > 1 and keys[1] not in fields:
            raise ConfigError(
                f"Unknown option {token!r}: {keys[1]!r} is not an LlmArgs setting."
                f"{_suggest(keys[1], fields, prefix='--args.')}"
            )
        return keys
    if head in fields:
        return [ARGS_GROUP, *keys]
    if head in flags:
        if len(keys) > 1:
            raise ConfigError(f"Unknown option {token!r}: --{_kebab(head)} takes no sub-keys.")
        return keys
    candidates = [*fields, *flags]
    suggestion = _suggest(head, candidates, prefix="--") or _suggest(
        head, groups, prefix="--", suffix=".<key>"
    )
    allowed = ", ".join(f"--{_kebab(g)}.<key>" for g in sorted(groups))
    raise ConfigError(
        f"Unknown option {token!r}.{suggestion} Options are LlmArgs settings (--<setting> or "
        f"--args.<setting>...), the groups {allowed}"
        + (f", and {', '.join('--' + _kebab(f) for f in sorted(flags))}" if flags else "")
        + "."
    )


def _value_of(values: list[Any]) -> Any:
    if not values:
        return True
    return values[0] if len(values) == 1 else values


def _suggest(name: str, candidates: Iterable[str], prefix: str = "", suffix: str = "") -> str:
    found = close_matches(name, candidates)
    if not found:
        return ""
    return " Did you mean " + " or ".join(f"'{prefix}{_kebab(f)}{suffix}'" for f in found) + "?"


def _snake(key: str) -> str:
    return key.replace("-", "_")


def _kebab(key: str) -> str:
    return key.replace("_", "-")


def cli_help_text(
    groups: Iterable[str] = (), flags: Iterable[str] = (), settings: type[BaseModel] = LlmArgs
) -> str:
    """Help text listing every LlmArgs setting with its description, then groups and flags."""
    lines = [
        "Options (--<setting> value, --args.<setting>.<key>=value; kebab-case or snake_case;",
        "values are YAML: 2, true, bfloat16, [1,2], {a: 1}):",
    ]
    for name, info in settings.model_fields.items():
        lines.append(f"  --{_kebab(name):<28} {info.description or ''}")
    for group in groups:
        lines.append(f"  --{_kebab(group)}.<key> value")
    for flag in flags:
        lines.append(f"  --{_kebab(flag)} [value]")
    return "\n".join(lines)
