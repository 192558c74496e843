"""List every registered transform: name, stage, summary, before -> after, config fields.

    python -m autodeploy.tools.list_transforms [--json] [--stage STAGE] [NAME ...]

The stage shown is the one the transform declares (else the one ``default.yaml`` gives it; "-"
for neither), followed by the facts it requires, uses, provides and invalidates.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Any

from ..transforms import Stages, TransformConfig, TransformRegistry
from ..utils.exit_codes import tool_main

_COMMON_FIELDS = set(TransformConfig.model_fields)
_FACT_KINDS = ("requires", "uses", "provides", "invalidates")


def default_stages() -> dict[str, str]:
    """Transform name -> stage as listed in ``default.yaml`` (in pipeline order)."""
    from importlib.resources import files

    import yaml

    text = files("autodeploy.config").joinpath("default.yaml").read_text()
    entries = (yaml.safe_load(text) or {}).get("transforms") or {}
    return {name: str(cfg.get("stage", "-")) for name, cfg in entries.items()}


def describe(name: str, stage: str) -> dict[str, Any]:
    cls = TransformRegistry.get(name)
    doc = inspect.cleandoc(cls.__doc__ or "").strip()
    summary, _, details = doc.partition("\n")
    fields = []
    for field_name, info in cls.get_config_class().model_fields.items():
        if field_name in _COMMON_FIELDS:
            continue
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        fields.append(
            {
                "name": field_name,
                "type": _type_name(info.annotation),
                "default": default,
                "description": info.description or "",
            }
        )
    return {
        "name": name,
        "stage": cls.stage.value if cls.stage is not None else stage,
        "optional": cls.optional,
        **{kind: [f.name for f in getattr(cls, kind)] for kind in _FACT_KINDS},
        "summary": summary,
        "details": details.strip(),
        "fields": fields,
        "module": TransformRegistry.origin(name),
    }


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


def _format(entry: dict[str, Any]) -> str:
    lines = [f"{entry['name']}  [stage: {entry['stage']}]", f"    {entry['summary']}"]
    facts = [f"{kind}: {', '.join(entry[kind])}" for kind in _FACT_KINDS if entry[kind]]
    if facts or not entry["optional"]:
        lines.append(f"    {'; '.join([*facts, *([] if entry['optional'] else ['not optional'])])}")
    for line in entry["details"].splitlines():
        lines.append(f"    {line}" if line.strip() else "")
    if entry["fields"]:
        lines.append("    fields:")
        for field in entry["fields"]:
            lines.append(
                f"      {field['name']}: {field['type']} = {field['default']!r}"
                f"  -- {field['description']}"
            )
    return "\n".join(lines)


@tool_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autodeploy.tools.list_transforms", description=__doc__.split("\n")[0]
    )
    parser.add_argument("names", nargs="*", help="only these transforms")
    parser.add_argument("--stage", choices=[s.value for s in Stages], help="only this stage")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    opts = parser.parse_args(argv)

    stages = default_stages()
    in_pipeline = [n for n in stages if TransformRegistry.has(n)]
    others = [n for n in TransformRegistry.names() if n not in stages]
    names = opts.names or (in_pipeline + others)
    entries = [describe(n, stages.get(n, "-")) for n in names]  # unknown name: exit 2
    if opts.stage:
        entries = [e for e in entries if e["stage"] == opts.stage]
    if opts.json:
        print(json.dumps(entries, indent=2, default=str))
        return 0
    common = ", ".join(sorted(_COMMON_FIELDS))
    print(f"{len(entries)} transforms. Fields every transform accepts: {common}.\n")
    print("\n\n".join(_format(e) for e in entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
