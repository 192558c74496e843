"""Plugin discovery: third-party modules that register transforms, backends or factories.

Two sources, loaded once per process (spawned ranks load them again when they import
autodeploy):

- installed packages that declare an entry point in the group ``autodeploy.plugins``
  (``[project.entry-points."autodeploy.plugins"] my_plugin = "my_pkg.autodeploy_plugin"``),
- ``AUTODEPLOY_PLUGINS=module_a,module_b``: an explicit allowlist of importable modules.

Nothing else is imported: a module that is not named in one of these is never loaded.
Registering a name that already exists (a built-in included) is an error.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from .utils.errors import ConfigError
from .utils.logger import logger

ENTRY_POINT_GROUP = "autodeploy.plugins"
PLUGINS_ENV = "AUTODEPLOY_PLUGINS"

_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import every plugin not imported yet; return the names loaded by this call."""
    newly: list[str] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry-point:{ep.name}"
        if key in _loaded:
            continue
        _loaded.add(key)
        try:
            ep.load()
        except Exception as exc:
            raise ConfigError(
                f"Plugin entry point {ep.name!r} ({ep.value}) in group {ENTRY_POINT_GROUP!r} "
                f"failed to load: {type(exc).__name__}: {exc}. Fix or uninstall that package."
            ) from exc
        newly.append(ep.name)
    for module_name in _env_modules():
        if module_name in _loaded:
            continue
        _loaded.add(module_name)
        try:
            importlib.import_module(module_name)
        except Exception as exc:
            raise ConfigError(
                f"Plugin module {module_name!r} from {PLUGINS_ENV} failed to import: "
                f"{type(exc).__name__}: {exc}. Check the name and that it is on PYTHONPATH."
            ) from exc
        newly.append(module_name)
    if newly:
        logger.info("loaded plugins: %s", ", ".join(newly))
    return newly


def _env_modules() -> list[str]:
    raw = os.environ.get(PLUGINS_ENV, "")
    return [name.strip() for name in raw.split(",") if name.strip()]
