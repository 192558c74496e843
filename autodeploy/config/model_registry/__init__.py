"""The model registry: per-model settings that ship with the package, composed from small files.

Layout (this directory; ``tools.registry --registry-dir`` and tests can point elsewhere):

- ``models.yaml``: ``version: 1``, ``description``, ``templates`` (files no entry uses yet ->
  why), ``models``: entries ``{name, config_id?, yaml_extra: [files], architecture?,
  deployments?, device_settings?, disabled_reason?}`` (schema in ``schema.py``);
- ``configs/*.yaml``: reusable fragments, each a partial LlmArgs (any setting but ``model``,
  ``use_registry``, ``strict_registry``, ``registry_config_id``, ``yaml_extra``; never
  ``trust_remote_code: true``).

``LlmArgs(model=..., use_registry=True)`` finds the entry (by name, else by the architecture of
the model's config) and inserts its files as configuration layers between default.yaml and the
user's yaml_extra files (``composition.py``). Known-good deployments and device settings:
``deployment.py``. Validation on load: ``loader.py``; the deeper check that every entry composes
into a valid configuration: ``validation.py``. Command line: ``python -m
autodeploy.tools.registry list | show NAME | resolve NAME_OR_PATH | check``.

Disabled entries (``disabled_reason``: what is missing, e.g. Mamba state caches) are validated
like enabled ones, their files included, and compose into a valid configuration; applying one
logs a warning (an error with ``strict_registry``). Templates (``templates:``) are files that
describe settings for features not built yet: checked as YAML and for their top-level keys,
never composed, and no entry may list one.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING

from .composition import (
    NoMatch,
    RegistryPlan,
    Selection,
    build_plan,
    register_registry_layers,
    registry_layers,
    resolve_registry,
    select_entry,
)
from .deployment import (
    AppliedSetting,
    DeploymentCheck,
    apply_environment,
    check_deployment,
    environment_settings,
)
from .loader import CALLER_CHOSEN_KEYS, PACKAGE_DIR, Registry, load_registry
from .matching import ArchitectureMatch, match_architecture, pattern_matches, read_hf_config
from .schema import (
    DEFAULT_CONFIG_ID,
    ArchitecturePattern,
    Deployment,
    DeviceSettings,
    RegistryEntry,
    RegistryFile,
)
from .summary import applied_settings, format_applied_settings

if TYPE_CHECKING:
    from ..settings import LlmArgs

__all__ = [
    "CALLER_CHOSEN_KEYS",
    "DEFAULT_CONFIG_ID",
    "PACKAGE_DIR",
    "AppliedSetting",
    "ArchitectureMatch",
    "ArchitecturePattern",
    "Deployment",
    "DeploymentCheck",
    "DeviceSettings",
    "NoMatch",
    "Registry",
    "RegistryEntry",
    "RegistryFile",
    "RegistryPlan",
    "Selection",
    "apply_environment",
    "apply_registry_environment",
    "applied_settings",
    "build_plan",
    "check_deployment",
    "environment_settings",
    "format_applied_settings",
    "load_registry",
    "match_architecture",
    "pattern_matches",
    "read_hf_config",
    "register_registry_layers",
    "registry_layers",
    "resolve_registry",
    "select_entry",
]


def apply_registry_environment(
    args: LlmArgs, environ: MutableMapping[str, str] | None = None
) -> list[AppliedSetting]:
    """Set the environment variables of ``args``' registry device settings that ``environ``
    (default ``os.environ``) does not set yet. Returns one record per variable.

    Call once before building (the model runs with the environment of that moment). Nothing
    happens without use_registry, without a match, or for a deployment that is not known-good.
    """
    plan = resolve_registry(args)
    return apply_environment(plan.deployment if plan is not None else None, environ)
