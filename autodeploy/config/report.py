"""Print a resolved configuration with the source of every value.

Two styles:

- ``"yaml"``: valid YAML (it can be saved and used as a ``yaml_extra`` file) with a
  ``# <source>`` comment after every value, headed by the list of layers applied;
- ``"table"``: three columns, dotted key path, value, source.
"""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any, Literal

from .layers import CALLER_ONLY_KEYS, iter_leaves
from .yaml_loader import dump_yaml_value

if TYPE_CHECKING:
    from .settings import LlmArgs

_INDENT = "  "


def resolved_view(
    args: LlmArgs, include_transform_defaults: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values and ``{dotted path: source}`` that the formatter shows.

    With ``include_transform_defaults`` every transform shows all fields of its config class;
    the ones no layer set are marked "default".
    """
    values = args.to_dict()
    sources = args.provenance()
    if include_transform_defaults and values.get("transforms"):
        from ..transforms import parse_transform_configs

        parsed = parse_transform_configs(values["transforms"])
        expanded = {}
        for name, config in parsed.items():
            full = config.model_dump(mode="json")
            given = values["transforms"][name]
            # keys the user layers set first (their order), then the remaining defaults
            expanded[name] = {**{k: full.get(k, v) for k, v in given.items()}, **full}
            for key in full:
                sources.setdefault(f"transforms.{name}.{key}", "default")
        values["transforms"] = expanded
    return values, sources


def format_resolved_config(
    args: LlmArgs,
    style: Literal["yaml", "table"] = "yaml",
    include_transform_defaults: bool = False,
) -> str:
    """The resolved configuration with where each value came from (see the module docstring)."""
    values, sources = resolved_view(args, include_transform_defaults)
    if style == "table":
        return _format_table(values, sources)
    if style != "yaml":
        raise ValueError(f"style must be 'yaml' or 'table', got {style!r}")
    header = ["# Resolved autodeploy configuration. Layers applied, lowest first:"]
    header += [f"#   {source}" for source in args.layer_sources()]
    for key in CALLER_ONLY_KEYS:
        if values.get(key):
            header.append(f"# {key} (not repeated below): {dump_yaml_value(values[key])}")
        values.pop(key, None)
    notes = args.upstream_notes()
    if notes:
        from .upstream import format_upstream_notes

        header.append("# Upstream (TensorRT-LLM AutoDeploy) keys:")
        header += [f"#   {line}" for line in format_upstream_notes(notes)]
    return "\n".join(header) + "\n" + format_values_with_sources(values, sources)


def format_values_with_sources(values: dict[str, Any], sources: dict[str, str]) -> str:
    """Nested ``values`` as YAML with a ``# <source>`` comment after every leaf
    (``sources``: dotted path -> source; missing paths show "default")."""
    body: list[tuple[str, str]] = []
    _yaml_lines(values, (), sources, body)
    width = max((len(text) for text, comment in body if comment), default=0)
    lines = [f"{text.ljust(width)}  # {comment}" if comment else text for text, comment in body]
    return "\n".join(lines) + "\n"


def _yaml_lines(
    node: dict[str, Any],
    prefix: tuple[str, ...],
    sources: dict[str, str],
    out: list[tuple[str, str]],
) -> None:
    indent = _INDENT * len(prefix)
    for key, value in node.items():
        path = (*prefix, str(key))
        label = dump_yaml_value(key)
        if isinstance(value, dict) and value:
            out.append((f"{indent}{label}:", ""))
            _yaml_lines(value, path, sources, out)
        else:
            source = sources.get(".".join(path), "default")
            out.append((f"{indent}{label}: {dump_yaml_value(value)}", source))


def _format_table(values: dict[str, Any], sources: dict[str, str]) -> str:
    rows = [("key", "value", "source")]
    for path, value in iter_leaves(values):
        dotted = ".".join(str(p) for p in path)
        rows.append((dotted, dump_yaml_value(value), sources.get(dotted, "default")))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return (
        "\n".join(
            f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}".rstrip()
            for row in rows
        )
        + "\n"
    )


def print_resolved_config(
    args: LlmArgs,
    file: IO[str] | None = None,
    style: Literal["yaml", "table"] = "yaml",
    include_transform_defaults: bool = False,
) -> None:
    """Write ``format_resolved_config(args, ...)`` to ``file`` (stdout by default)."""
    stream = file if file is not None else sys.stdout
    stream.write(format_resolved_config(args, style, include_transform_defaults))
