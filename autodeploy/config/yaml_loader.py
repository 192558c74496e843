"""Strict YAML reading for configuration files and command-line values.

Differences from ``yaml.safe_load``, all to avoid surprises in a configuration:

- scalars follow YAML 1.2: only ``true``/``false`` are booleans (``yes``, ``no``, ``on``, ``off``
  stay strings), ``1e-5`` is a float, ``1:30`` and ``2024-01-01`` stay strings, ``010`` is not an
  octal number (it stays the string ``"010"``);
- a key repeated in one mapping is an error (PyYAML would silently keep the last one);
- every error names the file, line and column;
- ``${...}`` has no meaning: such a value is an ordinary string (no interpolation).

Alongside the data, the loader returns the line of every mapping key (by key path), so later
errors about a key can point into the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..utils.errors import ConfigError

KeyPath = tuple[Any, ...]

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_REPLACED = {_BOOL, _INT, _FLOAT, _TIMESTAMP}


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars (see the module docstring)."""


StrictLoader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(
    _INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)
StrictLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
StrictLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml_text(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse one YAML document. Returns the data and ``{key path: 1-based line}``.

    ``source`` names the text in error messages (usually the file path).
    """
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[KeyPath, int] = {}
        _check_keys(loader, node, (), lines, source)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or "could not be parsed"
        raise ConfigError(
            f"Malformed YAML in {where}: {problem}. Fix the syntax there (indentation, a missing "
            "':' or a stray character are the usual causes)."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Malformed YAML in {source}: {exc}") from None
    finally:
        loader.dispose()


def load_yaml_mapping(path: str | Path, source: str | None = None) -> tuple[dict, dict]:
    """Read a YAML file whose top level is a mapping (an empty file is an empty mapping).

    Returns ``(data, key lines)``; raises ``ConfigError`` naming the file for a missing,
    unreadable or malformed file.
    """
    path = Path(path)
    name = source or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"YAML file {name!r} not found (looked for {path.resolve()}). Check the path; a "
            "relative path is resolved against the current directory."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read YAML file {name!r}: {exc}") from None
    data, lines = parse_yaml_text(text, name)
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}: the top level must be a mapping of settings (key: value), got "
            f"{type(data).__name__}."
        )
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(
                f"{name}, line {lines.get((key,), '?')}: top-level key {key!r} is not a string."
            )
    return data, lines


def parse_scalar(text: str) -> Any:
    """Parse one command-line value as a YAML scalar or flow collection.

    ``2`` -> 2, ``true`` -> True, ``[1,2]`` -> [1, 2], ``{a: 1}`` -> {"a": 1}, ``null`` -> None,
    ``bfloat16`` -> "bfloat16". An empty value is the empty string. Text that is not valid YAML,
    or that would only become a mapping by accident (``a: b``), stays a string.
    """
    if text.strip() == "":
        return text
    try:
        value, _ = parse_yaml_text(text, "command-line value")
    except ConfigError:
        return text
    if isinstance(value, (dict, list)) and text.lstrip()[:1] not in ("{", "["):
        return text
    return value


def _check_keys(
    loader: StrictLoader, node: Node, path: KeyPath, lines: dict[KeyPath, int], source: str
) -> None:
    """Record the line of every mapping key; reject keys repeated within one mapping."""
    if isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _check_keys(loader, item, (*path, index), lines, source)
        return
    if not isinstance(node, MappingNode):
        return
    first_line: dict[Any, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, ScalarNode):
            continue  # ``<<: *anchor`` merges; complex keys are not used in configs
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in first_line:
            dotted = ".".join(str(p) for p in (*path, key))
            raise ConfigError(
                f"{source}, line {line}: duplicate key {dotted!r} (first defined at line "
                f"{first_line[key]}). Keep one of them."
            )
        first_line[key] = line
        lines[(*path, key)] = line
        _check_keys(loader, value_node, (*path, key), lines, source)


class StrictDumper(yaml.SafeDumper):
    """SafeDumper that quotes every string StrictLoader or a YAML 1.1 reader would not read back
    as that string (``"yes"``, ``"1e-5"``, ``"010"``)."""


StrictDumper.yaml_implicit_resolvers = {
    first: list(yaml.SafeDumper.yaml_implicit_resolvers.get(first, []))
    + list(StrictLoader.yaml_implicit_resolvers.get(first, []))
    for first in set(yaml.SafeDumper.yaml_implicit_resolvers)
    | set(StrictLoader.yaml_implicit_resolvers)
}


def dump_yaml_value(value: Any) -> str:
    """One value as inline YAML (flow style): ``2``, ``'yes'``, ``[1, 2]``, ``{a: 1}``."""
    text = yaml.dump(
        value, Dumper=StrictDumper, default_flow_style=True, width=2**31, sort_keys=False
    ).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].rstrip()
    return text
