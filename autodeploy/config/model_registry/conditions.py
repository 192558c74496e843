"""Package-version conditions for registry values (vLLM-Spyre style).

Grammar of a condition (a string)::

    <package>_<op>_<version>        e.g. torch_lt_2_12, transformers_ge_5_20, torch_sendnn_lt_1_0_3

- ``<package>``: an installed distribution name, lower case, ``-`` written as ``_``
  (``torch_sendnn`` is the distribution ``torch-sendnn`` or ``torch_sendnn``);
- ``<op>``: ``lt`` (<), ``le`` (<=), ``gt`` (>), ``ge`` (>=), ``eq`` (==), ``ne`` (!=);
- ``<version>``: numbers joined by ``_`` (``2_12`` is 2.12); compared with the installed
  version's release numbers (local and pre-release parts ignored: 2.12.0+cpu counts as 2.12.0).

The package is the longest prefix before ``_<op>_<digits>`` (so package names may contain ``_``).
A package that is not installed makes the condition false. Anything that does not follow the
grammar is an error when the registry loads.

A *versioned value* is either a plain value or a mapping ``{<condition>: value, ...,
default: value}``: the first condition (in file order) that holds picks its value, else
``default`` (required).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

DEFAULT_KEY = "default"
_OPS: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
}
_CONDITION = re.compile(
    r"^(?P<package>[a-z][a-z0-9_]*?)_(?P<op>lt|le|gt|ge|eq|ne)_(?P<version>\d+(?:_\d+)*)$"
)
GRAMMAR_HINT = (
    "a condition is <package>_<op>_<version>, e.g. torch_lt_2_12 (op: lt, le, gt, ge, eq, ne; "
    "version numbers joined by _)"
)


@dataclass(frozen=True)
class Condition:
    """A parsed ``<package>_<op>_<version>`` condition."""

    text: str
    package: str
    op: str
    version: tuple[int, ...]

    def installed_version(self) -> tuple[int, ...] | None:
        for name in (self.package, self.package.replace("_", "-")):
            try:
                return _release(metadata.version(name))
            except metadata.PackageNotFoundError:
                continue
        return None

    def holds(self) -> bool:
        installed = self.installed_version()
        if installed is None:
            return False
        width = max(len(installed), len(self.version))
        pad = lambda v: v + (0,) * (width - len(v))  # noqa: E731 - 2.12 == 2.12.0
        return _OPS[self.op](pad(installed), pad(self.version))

    def describe(self) -> str:
        installed = self.installed_version()
        have = ".".join(map(str, installed)) if installed else "not installed"
        want = ".".join(map(str, self.version))
        return f"{self.text} ({self.package} {have} {self.op} {want}: {self.holds()})"


def parse_condition(text: Any) -> Condition:
    """Parse ``text``; raises ``ValueError`` (the schema turns it into a located error)."""
    match = _CONDITION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a version condition: {GRAMMAR_HINT}")
    version = tuple(int(part) for part in match.group("version").split("_"))
    return Condition(text, match.group("package"), match.group("op"), version)


def check_versioned(value: Any, check_leaf: Callable[[Any], Any]) -> Any:
    """Validate a versioned value: every condition parses, ``default`` is there, every leaf
    passes ``check_leaf`` (which returns it, possibly converted)."""
    if not isinstance(value, Mapping):
        return check_leaf(value)
    if DEFAULT_KEY not in value:
        raise ValueError(
            f"a versioned value needs a '{DEFAULT_KEY}' (used when no condition holds); got "
            f"keys {list(value)}"
        )
    checked = {}
    for key, leaf in value.items():
        if key != DEFAULT_KEY:
            parse_condition(key)
        checked[key] = check_leaf(leaf)
    return checked


def resolve_versioned(value: Any) -> tuple[Any, str]:
    """``(value in effect, why)``: the first condition that holds, else ``default``."""
    if not isinstance(value, Mapping):
        return value, "plain value"
    for key, leaf in value.items():
        if key != DEFAULT_KEY and parse_condition(key).holds():
            return leaf, parse_condition(key).describe()
    return value[DEFAULT_KEY], "default (no condition holds)"


def _release(version: str) -> tuple[int, ...]:
    numbers = re.match(r"^\d+(?:\.\d+)*", version)
    return tuple(int(n) for n in numbers.group(0).split(".")) if numbers else ()
