"""Inspect the model registry.

::

    python -m autodeploy.tools.registry list [--disabled | --enabled]
    python -m autodeploy.tools.registry show NAME [--config-id ID]
    python -m autodeploy.tools.registry resolve NAME_OR_PATH [--config-id ID] [--strict]
        [--table] [LlmArgs overrides: --world-size 1 --args.max-seq-len=4096 ...]
    python -m autodeploy.tools.registry check [--json]

- ``list``: every entry: name, config_id, world size, files, enabled or why not;
- ``show``: an entry (every variant of the name without ``--config-id``): files and their
  contents, architecture pattern, deployments, device settings;
- ``resolve``: what ``use_registry=True`` does for a hub name or a local checkpoint directory:
  the entry and how it was matched, the files applied, the deployment check, the applied
  settings (setting, default, applied, source), and the merged configuration with the source of
  every value. Extra options are LlmArgs overrides (as in build_and_run), to see how they
  combine with the registry;
- ``check``: the deep check (every entry composes into a valid configuration; architecture
  patterns name real config attributes). ``--json``: one record per entry, ``{name,
  config_id, ok, error, not_used}`` (``error`` says what is missing; ``not_used``: upstream
  keys the entry sets that autodeploy does not use).

The registry may be in autodeploy's format (version 1) or upstream AutoDeploy's (version
'2.0', e.g. TensorRT-LLM's ``examples/auto_deploy/model_registry``): ``--registry-dir DIR``.

``--registry-dir DIR`` (any command) reads another registry (a directory with models.yaml and
configs/). Exit status: 0 success, 1 no entry matches (``resolve``) or problems found
(``check``), 2 configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from ..config import LlmArgs, format_resolved_config, parse_cli
from ..config.layers import merge_layers
from ..config.model_registry import (
    NoMatch,
    Registry,
    RegistryEntry,
    applied_settings,
    format_applied_settings,
    load_registry,
    resolve_registry,
    select_entry,
)
from ..config.model_registry.loader import registry_dir
from ..config.model_registry.validation import check_entries, check_registry
from ..config.upstream import translate_layers
from ..config.yaml_loader import dump_yaml_value
from ..utils.errors import ConfigError
from ..utils.exit_codes import tool_main

PROG = "python -m autodeploy.tools.registry"


@tool_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    opts, rest = parser.parse_known_args(argv)
    if rest and opts.command != "resolve":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        directory = Path(opts.registry_dir) if opts.registry_dir else None
        with registry_dir(directory) if directory else nullcontext():
            registry = load_registry()
            if opts.command == "list":
                return _list(registry, opts.enabled, opts.disabled)
            if opts.command == "show":
                return _show(registry, opts.name, opts.config_id)
            if opts.command == "resolve":
                return _resolve(registry, opts, rest)
            return _check(registry, opts.json)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("::", 1)[1],
    )
    parser.add_argument("--registry-dir", help="registry directory (models.yaml + configs/)")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every entry")
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--enabled", action="store_true", help="only enabled entries")
    which.add_argument("--disabled", action="store_true", help="only disabled entries")
    show = commands.add_parser("show", help="one entry and its files")
    show.add_argument("name")
    show.add_argument("--config-id", help="the variant (default: every variant of NAME)")
    resolve = commands.add_parser("resolve", help="what use_registry=True applies")
    resolve.add_argument("model", metavar="NAME_OR_PATH")
    resolve.add_argument("--config-id", help="the variant (default: 'default')")
    resolve.add_argument("--strict", action="store_true", help="strict_registry=True")
    resolve.add_argument("--table", action="store_true", help="merged config as a table")
    check = commands.add_parser("check", help="deep check: every entry composes")
    check.add_argument("--json", action="store_true", help="one JSON record per entry")
    for sub in (listing, show, resolve, commands.choices["check"]):
        sub.add_argument("--registry-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


# ----------------------------------------------------------------------------- list


def _list(registry: Registry, only_enabled: bool, only_disabled: bool) -> int:
    entries = [
        e
        for e in registry.entries
        if not (only_enabled and not e.enabled) and not (only_disabled and e.enabled)
    ]
    enabled = sum(e.enabled for e in registry.entries)
    print(
        f"{len(registry.entries)} entries ({enabled} enabled, {len(registry.entries) - enabled} "
        f"disabled) in {registry.models_path}"
    )
    rows = [("name", "config_id", "world_size", "architecture", "files", "status")]
    for entry in entries:
        rows.append(
            (
                entry.name,
                entry.config_id,
                str(_world_size(registry, entry)),
                "yes" if entry.architecture else "-",
                ", ".join(f.removesuffix(".yaml") for f in entry.files),
                "enabled" if entry.enabled else f"disabled: {entry.disabled_reason}",
            )
        )
    print()
    print(_table(rows))
    if registry.templates:
        print("\nTemplates (no entry may use them yet):")
        for file, reason in registry.templates.items():
            print(f"  {file}: {reason}")
    return 0


def _world_size(registry: Registry, entry: RegistryEntry) -> int | str:
    if entry.world_size is not None:
        return entry.world_size
    try:
        layers = [registry.fragment_layer(f) for f in entry.files]
    except ConfigError:
        return "?"  # a file the entry cannot use (``check`` says why)
    layers, _ = translate_layers(layers, LlmArgs.model_fields)  # tensor_parallel_size
    merged, _ = merge_layers(layers)
    return merged.get("world_size", LlmArgs.model_fields["world_size"].default)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1]
        for row in rows
    )


# ----------------------------------------------------------------------------- show


def _show(registry: Registry, name: str, config_id: str | None) -> int:
    if config_id is not None or not registry.entries_named(name):
        entries = [registry.lookup(name, config_id)]  # raises with close matches
    else:
        entries = registry.entries_named(name)
    for index, entry in enumerate(entries):
        if index:
            print()
        print(f"{entry.name}  [config_id: {entry.config_id}]  ({registry.where(entry)})")
        status = "enabled" if entry.enabled else f"disabled: {entry.disabled_reason}"
        print(f"  status:       {status}")
        print(f"  yaml_extra:   {', '.join(entry.files)}")
        if entry.architecture is not None:
            pattern = entry.architecture
            print(f"  architecture: {pattern.describe()} (specificity {pattern.specificity})")
        else:
            print("  architecture: - (found by name only)")
        if entry.deployments:
            print("  deployments:")
            for deployment in entry.deployments:
                print(f"    {deployment.describe()}")
        for world_size, variants in entry.device_settings.items():
            for settings in variants:
                values = settings.model_dump(exclude_defaults=True)
                shown = ", ".join(f"{k}={dump_yaml_value(v)}" for k, v in values.items())
                print(f"  device_settings[world_size={world_size}]: {shown}")
        print("  files (merged in this order over default.yaml):")
        for file in entry.files:
            path = registry.configs_path / file
            print(f"    --- configs/{file}")
            for line in path.read_text(encoding="utf-8").rstrip().splitlines():
                print(f"    {line}")
    return 0


# ----------------------------------------------------------------------------- resolve


def _resolve(registry: Registry, opts: argparse.Namespace, rest: list[str]) -> int:
    cli = parse_cli(rest)["args"]
    outcome = select_entry(registry, opts.model, opts.config_id)
    if isinstance(outcome, NoMatch) and not opts.strict:
        print(f"{outcome.describe(registry)} Nothing from the registry applies.")
        return 1
    args = LlmArgs.from_cli(
        cli,
        model=opts.model,
        use_registry=True,
        strict_registry=opts.strict,
        registry_config_id=opts.config_id,
    )
    plan = resolve_registry(args)
    if plan is None:  # only when an override turned use_registry off or changed the model
        print(
            f"Nothing from the registry applies to {args.model!r} (use_registry="
            f"{args.use_registry})."
        )
        return 1
    entry = plan.entry
    print(f"entry:      {entry.label}  ({plan.registry.where(entry)})")
    print(f"matched:    {plan.selection.describe()}")
    print(
        f"status:     {'enabled' if entry.enabled else 'DISABLED: ' + str(entry.disabled_reason)}"
    )
    print(f"layers:     {', '.join(args.layer_sources())}  (lowest first)")
    if plan.deployment is not None:
        print(f"deployment: {plan.deployment.describe()}")
    print("\napplied settings:")
    table = format_applied_settings(applied_settings(args, plan))
    print("\n".join(f"  {line}" for line in table.splitlines()))
    print("\nmerged configuration:")
    print(format_resolved_config(args, "table" if opts.table else "yaml"), end="")
    return 0


# ----------------------------------------------------------------------------- check


def _check(registry: Registry, as_json: bool = False) -> int:
    if as_json:
        records = check_entries(registry)
        print(json.dumps([record.as_record() for record in records], indent=2))
        failed = sum(not record.ok for record in records)
        print(f"{len(records) - failed} of {len(records)} entries compose", file=sys.stderr)
        return 1 if failed else 0
    problems = check_registry(registry)
    if problems:
        print(f"{len(problems)} problem(s) in {registry.models_path}:")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(
        f"{registry.models_path}: {len(registry.entries)} entries, "
        f"{len(registry.fragments)} config files, all compose."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
