"""Known-good deployments and the device settings that come with them.

An entry may list the ``(world_size, max_seq_len, max_batch_size)`` combinations it is known to
run well with (``deployments``) and, per world size, device settings (``device_settings``):

- ``max_num_tokens``: the token budget of one step (the chunked-prefill budget); smaller than
  the deployment's ``max_seq_len`` it also sets ``enable_chunked_prefill: true``;
- ``num_kv_pages``: a fixed KV-page budget; becomes ``kv_cache_config.max_tokens =
  num_kv_pages * kv_cache_config.tokens_per_block`` (the page size in effect); it may be
  versioned, ``{torch_lt_2_12: 2080, default: 8192}`` (grammar in ``conditions.py``);
- ``when``: a version condition; ``device_settings[world_size]`` may be a list, and the first
  item whose condition holds applies (an item without ``when`` always does);

A deployment may carry its own ``device_settings`` (several per world size, told apart by
``max_seq_len`` / ``max_batch_size``, as vLLM-Spyre nests them); they replace the entry's
``device_settings[world_size]`` for that deployment.
- ``env``: environment variables, set only where the process has not set them
  (``apply_environment``; booleans become "1"/"0").

The resolved combination (after every layer, the user's included) is looked up exactly. A
known-good one gets the device settings of its world size, as a configuration layer just above
the entry's files (so the user's own settings still win). Any other combination gets none of
them and a warning (an error with ``strict_registry``). An entry without ``deployments`` makes
no claim: no check, no device settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from ..layers import Layer
from .conditions import parse_condition
from .loader import MODELS_FILE, SOURCE_PREFIX, Registry
from .schema import Deployment, DeviceSettings, RegistryEntry


@dataclass(frozen=True)
class DeploymentCheck:
    """The resolved combination and whether the entry lists it."""

    requested: Deployment
    declared: tuple[Deployment, ...]
    device_settings: DeviceSettings | None  # of the requested world size, if known-good

    @property
    def known_good(self) -> bool | None:
        """True / False; None when the entry declares no deployments."""
        if not self.declared:
            return None
        return self.requested in self.declared

    def describe(self) -> str:
        if self.known_good is None:
            return f"{self.requested.describe()}: the entry declares no known-good deployments"
        if self.known_good:
            return f"{self.requested.describe()}: a known-good deployment"
        known = ", ".join(d.describe() for d in self.declared)
        return f"{self.requested.describe()} is not a known-good deployment (known: {known})"


@dataclass(frozen=True)
class AppliedSetting:
    """One setting the registry proposed: its value without the registry (``default``), the
    registry's value (``proposed``), the value in effect (``applied``) and who set that."""

    setting: str  # dotted key path, or env:<NAME>
    default: Any
    proposed: Any
    applied: Any
    source: str

    @property
    def overridden(self) -> bool:
        """The registry's value is not the one in effect (a higher layer or the env won)."""
        return not self.source.startswith(SOURCE_PREFIX)


def check_deployment(
    entry: RegistryEntry, world_size: int, max_seq_len: int, max_batch_size: int
) -> DeploymentCheck:
    requested = Deployment(
        world_size=world_size, max_seq_len=max_seq_len, max_batch_size=max_batch_size
    )
    declared = tuple(entry.deployments)
    settings = None
    if requested in declared:
        own = next(d for d in declared if d == requested).device_settings
        settings = (
            own if own is not None else pick_device_settings(entry.device_settings.get(world_size))
        )
    return DeploymentCheck(requested, declared, settings)


def pick_device_settings(
    candidates: DeviceSettings | list[DeviceSettings] | None,
) -> DeviceSettings | None:
    """The first of ``candidates`` whose ``when`` condition holds (no ``when``: always)."""
    if candidates is None:
        return None
    for settings in candidates if isinstance(candidates, list) else [candidates]:
        if settings.when is None or parse_condition(settings.when).holds():
            return settings
    return None


def device_settings_source(world_size: int) -> str:
    return f"{SOURCE_PREFIX}{MODELS_FILE}:device_settings[world_size={world_size}]"


def device_layer(
    registry: Registry, entry: RegistryEntry, check: DeploymentCheck, tokens_per_block: int
) -> Layer | None:
    """The configuration values of the device settings (None when there are none)."""
    settings = check.device_settings
    if settings is None:
        return None
    world_size = check.requested.world_size
    values: dict[str, Any] = {}
    lines = {}
    if settings.max_num_tokens is not None:
        values["max_num_tokens"] = settings.max_num_tokens
        lines[("max_num_tokens",)] = registry.line(
            entry, "device_settings", world_size, "max_num_tokens"
        )
        if settings.max_num_tokens < check.requested.max_seq_len:
            values["enable_chunked_prefill"] = True  # a step budget below the longest prompt
    pages, _ = settings.resolved_num_kv_pages()
    if pages is not None:
        values["kv_cache_config"] = {"max_tokens": pages * tokens_per_block}
        lines[("kv_cache_config", "max_tokens")] = registry.line(
            entry, "device_settings", world_size, "num_kv_pages"
        )
    if not values:
        return None
    known_lines = {path: line for path, line in lines.items() if line is not None}
    return Layer(device_settings_source(world_size), values, known_lines, registry.models_path)


def environment_settings(
    check: DeploymentCheck | None, environ: Mapping[str, str] | None = None
) -> list[AppliedSetting]:
    """The env records: (env:NAME, value before, registry's value, value in effect, source)."""
    if check is None or check.device_settings is None:
        return []
    environ = os.environ if environ is None else environ
    source = device_settings_source(check.requested.world_size)
    records = []
    for name, value in check.device_settings.env.items():
        proposed = env_text(value)
        before = environ.get(name)
        if before is None:
            records.append(AppliedSetting(f"env:{name}", None, proposed, proposed, source))
        else:
            records.append(AppliedSetting(f"env:{name}", before, proposed, before, "environment"))
    return records


def apply_environment(
    check: DeploymentCheck | None, environ: MutableMapping[str, str] | None = None
) -> list[AppliedSetting]:
    """Set the device settings' variables that ``environ`` (default os.environ) lacks."""
    environ = os.environ if environ is None else environ
    records = environment_settings(check, environ)
    for record in records:
        if not record.overridden:
            environ[record.setting[len("env:") :]] = record.applied
    return records


def env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
