"""The deep check of a registry (``tools.registry check``, and the tests of the shipped one).

Beyond what loading checks (``loader.py``):

- every entry, disabled ones included, composes into a valid ``LlmArgs`` (default.yaml, then
  its files, then its device settings for each known-good deployment): unknown transforms,
  backends, keys and bad values are reported with the file and line that set them;
- every architecture pattern names attributes that the config class of its ``model_type``
  has (a misspelled attribute would silently never match); model types transformers does not
  know are reported too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ...utils.errors import ConfigError
from ..validation import HEADER
from .loader import Registry, registry_dir
from .schema import RegistryEntry


@dataclass
class EntryCheck:
    """The outcome of composing one entry (``tools.registry check --json``)."""

    name: str
    config_id: str
    ok: bool
    error: str | None = None  # what is missing, when not ok
    not_used: list[str] = field(default_factory=list)  # upstream keys reported as not used

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def check_entries(registry: Registry) -> list[EntryCheck]:
    """One record per entry: does it compose (default deployment and every listed one)?"""
    records = []
    for entry in registry.entries:
        not_used: list[str] = []
        try:
            args = compose_entry(registry, entry)
            not_used = [n.key for n in args.upstream_notes() if not n.used]
            problems = compose_problems(registry, entry, with_default=False)
        except ConfigError as exc:
            problems = [str(exc)]
        problems += architecture_problems(entry)
        error = "; ".join(_one_line(p) for p in problems) or None
        records.append(EntryCheck(entry.name, entry.config_id, not problems, error, not_used))
    return records


def _one_line(problem: str) -> str:
    text = problem.replace(HEADER, "").replace("does not compose: ", "")
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def check_registry(registry: Registry) -> list[str]:
    """Every problem found, one line each (empty: the registry is sound)."""
    problems = []
    for entry in registry.entries:
        problems += [f"{entry.label}: {p}" for p in compose_problems(registry, entry)]
        problems += [f"{entry.label}: {p}" for p in architecture_problems(entry)]
    return problems


def compose_entry(
    registry: Registry, entry: RegistryEntry, world_size: int | None = None, **overrides: Any
) -> Any:
    """``LlmArgs`` for ``entry``, as ``use_registry`` would build it, without reading any model.

    ``world_size`` (with ``overrides``) selects a deployment to compose its device settings.
    """
    from ..settings import LlmArgs

    if world_size is not None:
        overrides["world_size"] = world_size
    with registry_dir(registry.directory):
        return LlmArgs(
            model=entry.name, use_registry=True, registry_config_id=entry.config_id, **overrides
        )


def compose_problems(
    registry: Registry, entry: RegistryEntry, with_default: bool = True
) -> list[str]:
    """Problems composing ``entry`` (its default deployment unless not ``with_default``, and
    every listed deployment)."""
    deployments = [None] * with_default + [
        {
            "world_size": d.world_size,
            "max_seq_len": d.max_seq_len,
            "max_batch_size": d.max_batch_size,
        }
        for d in entry.deployments
    ]
    problems = []
    for deployment in deployments:
        try:
            compose_entry(registry, entry, **(deployment or {}))
        except ConfigError as exc:
            where = f" (deployment {deployment})" if deployment else ""
            problems.append(f"does not compose{where}: {exc}")
    return problems


def architecture_problems(entry: RegistryEntry) -> list[str]:
    pattern = entry.architecture
    if pattern is None:
        return []
    from transformers import AutoConfig

    try:
        config = AutoConfig.for_model(pattern.model_type)
    except (ValueError, KeyError):
        return [f"architecture: model_type {pattern.model_type!r} is unknown to transformers"]
    problems = []
    for key, value in pattern.attributes.items():
        if not hasattr(config, key):
            problems.append(f"architecture.{key}: {type(config).__name__} has no attribute {key!r}")
        elif isinstance(value, dict):
            nested = getattr(config, key)
            for sub_key in value:
                if not hasattr(nested, sub_key) and not (
                    isinstance(nested, dict) and sub_key in nested
                ):
                    problems.append(
                        f"architecture.{key}.{sub_key}: {key} of {type(config).__name__} has "
                        f"no attribute {sub_key!r}"
                    )
    return problems
