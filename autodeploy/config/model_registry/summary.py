"""What the registry applied: one ``AppliedSetting`` per value it proposed.

``default`` is the value without the registry (default.yaml, else the field's or the transform
config's default; None: not set); ``applied`` the value in effect; ``source`` the layer that set
it, so a registry value that a user layer overrode shows the user's layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..layers import default_yaml_layer, iter_leaves, merge_layers
from ..shortcuts import TRANSFORM_SHORTCUTS
from ..yaml_loader import dump_yaml_value
from .composition import RegistryPlan
from .deployment import AppliedSetting, environment_settings

if TYPE_CHECKING:
    from ..settings import LlmArgs

_ABSENT = object()


def applied_settings(args: LlmArgs, plan: RegistryPlan) -> list[AppliedSetting]:
    """Records for every leaf the plan's layers set, then for its environment variables."""
    proposed, _ = merge_layers(list(plan.layers))
    values = args.to_dict()
    sources = args.provenance()
    baseline = _baseline(type(args))
    records = []
    for path, value in iter_leaves(proposed):
        dotted = ".".join(str(p) for p in path)
        applied = _walk(values, path)
        records.append(
            AppliedSetting(
                setting=dotted,
                default=_default_value(baseline, path),
                proposed=value,
                applied=None if applied is _ABSENT else applied,
                source=sources.get(dotted, "default"),
            )
        )
    return records + environment_settings(plan.deployment)


def format_applied_settings(records: list[AppliedSetting]) -> str:
    """A table: setting, default, applied, source (``proposed`` noted when overridden)."""
    rows = [("setting", "default", "applied", "source")]
    for record in records:
        source = record.source
        if record.overridden:
            source += f" (registry proposed {dump_yaml_value(record.proposed)})"
        rows.append((record.setting, _show(record.default), _show(record.applied), source))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3]
        for row in rows
    )


def _show(value: Any) -> str:
    return "-" if value is None else dump_yaml_value(value)


def _baseline(schema: type) -> dict[str, Any]:
    """Field defaults with default.yaml merged over them."""
    fields = schema.model_construct().model_dump(mode="json")
    merged, _ = merge_layers([default_yaml_layer()])
    out = dict(fields)
    for key, value in merged.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _default_value(baseline: dict[str, Any], path: tuple[Any, ...]) -> Any:
    target = TRANSFORM_SHORTCUTS.get(path[0]) if len(path) == 1 else None
    if target is not None:
        path = ("transforms", target.transform, target.key)
    found = _walk(baseline, path)
    if found is not _ABSENT:
        return found
    if len(path) == 3 and path[0] == "transforms" and path[1] in baseline.get("transforms", {}):
        return _transform_default(path[1], path[2])
    return None


def _transform_default(transform: str, key: str) -> Any:
    from ...transforms import TransformRegistry  # lazy: transforms import the config

    if not TransformRegistry.has(transform):
        return None
    info = TransformRegistry.get(transform).get_config_class().model_fields.get(key)
    if info is None or info.is_required():
        return None
    return info.get_default(call_default_factory=True)


def _walk(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node
