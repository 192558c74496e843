"""Load ``models.yaml`` and ``configs/``: schema, referential integrity, name lookup.

Loading fails (``ConfigError``, every problem listed) when:

- ``models.yaml`` is malformed or breaks the schema (the message names the key path, the line
  and the entry);
- an entry lists a file that is not in ``configs/``, or lists a template;
- a file in ``configs/`` is neither used by an entry nor listed under ``templates``;
- two entries have the same ``(name, config_id)``;
- a config file is malformed, sets a key that is not an ``LlmArgs`` setting, sets a key only
  the caller may choose (``model``, ``use_registry``, ...), or enables ``trust_remote_code``.

Disabled entries (``disabled_reason``) are held to all of these rules too: they are meant to be
switched on by deleting one line once the missing feature lands.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ...utils.errors import ConfigError
from ...utils.suggest import close_matches, did_you_mean
from ...utils.validation_errors import unknown_key_text
from ..layers import Layer, yaml_file_layer
from ..yaml_loader import KeyPath, load_yaml_mapping
from .schema import DEFAULT_CONFIG_ID, RegistryEntry, RegistryFile

PACKAGE_DIR = Path(__file__).parent
MODELS_FILE = "models.yaml"
CONFIGS_DIR = "configs"
AD_DEFAULTS_DIR = "ad_defaults"  # format 2.0: internal files; configs/ is searched too
SOURCE_PREFIX = "registry:"

# The registry that ``use_registry`` reads. Tests and ``tools.registry --registry-dir`` point it
# elsewhere; the directory holds models.yaml and configs/.
REGISTRY_DIR: Path = PACKAGE_DIR

# Settings the caller chooses; a registry file setting them would be circular or unsafe.
CALLER_CHOSEN_KEYS = ("model", "use_registry", "strict_registry", "registry_config_id")


@dataclass
class Registry:
    """A loaded, validated registry."""

    directory: Path
    entries: list[RegistryEntry]
    templates: dict[str, str]
    description: str
    lines: dict[KeyPath, int]  # key path in models.yaml -> line
    fragments: dict[str, Layer] = field(default_factory=dict)  # file name -> its layer
    version: Any = 1
    # Format 2.0: problems of a file, reported by the entries that list it (not at load time).
    file_problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def models_path(self) -> Path:
        return self.directory / MODELS_FILE

    @property
    def configs_path(self) -> Path:
        return self.directory / CONFIGS_DIR

    def names(self) -> list[str]:
        return list(dict.fromkeys(entry.name for entry in self.entries))

    def entries_named(self, name: str) -> list[RegistryEntry]:
        return [entry for entry in self.entries if entry.name == name]

    def line(self, entry: RegistryEntry, *keys: Any) -> int | None:
        """The line of ``models[<entry>].<keys>`` (or of the nearest key above it)."""
        path: tuple[Any, ...] = ("models", entry.index, *keys)
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return None

    def where(self, entry: RegistryEntry) -> str:
        line = self.line(entry, "name")
        return f"{self.models_path}, line {line}" if line else str(self.models_path)

    def lookup(self, name: str, config_id: str | None = None) -> RegistryEntry:
        """The entry ``(name, config_id)``; without config_id the only one, else the
        'default' one.

        Raises ``ConfigError`` for an unknown name (with close matches), an unknown config_id,
        or a name whose entries have no 'default' variant when config_id is None.
        """
        found = self.entries_named(name)
        if not found:
            raise ConfigError(
                f"Model {name!r} is not in the model registry ({self.models_path})."
                f"{self.suggest(name)} List the entries with `python -m "
                "autodeploy.tools.registry list`."
            )
        ids = [entry.config_id for entry in found]
        if config_id is None and len(found) == 1:
            return found[0]  # one variant: no need to name it (upstream names every variant)
        wanted = DEFAULT_CONFIG_ID if config_id is None else config_id
        for entry in found:
            if entry.config_id == wanted:
                return entry
        if config_id is None:
            raise ConfigError(
                f"Model {name!r} has several registry entries and none is the "
                f"'{DEFAULT_CONFIG_ID}' one: choose with registry_config_id (--config-id in the "
                f"registry tool). config_ids: {', '.join(ids)}."
            )
        raise ConfigError(
            f"Model {name!r} has no registry entry with config_id {config_id!r}."
            f"{did_you_mean(config_id, ids)} config_ids: {', '.join(ids)}."
        )

    def suggest(self, name: str) -> str:
        """ " Did you mean ...?" over entry names, comparing whole ids and the part after '/'."""
        names = self.names()
        found = close_matches(name, names)
        short = name.rsplit("/", 1)[-1]
        by_short = {n.rsplit("/", 1)[-1]: n for n in names}
        found += [by_short[s] for s in close_matches(short, by_short) if by_short[s] not in found]
        found = found[:3]
        return " Did you mean " + " or ".join(repr(f) for f in found) + "?" if found else ""

    def file_path(self, file: str) -> Path:
        """Where ``file`` lives: ``configs/``, or (format 2.0 ad_defaults) ``ad_defaults/``."""
        for folder in (self.configs_path, self.directory / AD_DEFAULTS_DIR):
            if (folder / file).is_file():
                return folder / file
        return self.configs_path / file

    def fragment_layer(self, file: str) -> Layer:
        """A fresh layer for ``configs/<file>``, labelled ``registry:<file>``."""
        if file in self.file_problems:
            raise ConfigError(
                f"registry file {file} cannot be used: " + "; ".join(self.file_problems[file])
            )
        layer = self.fragments[file]
        return Layer(layer.source, layer.values, dict(layer.lines), layer.file)


@contextmanager
def registry_dir(directory: str | Path) -> Iterator[Path]:
    """Within the block, ``use_registry`` reads the registry in ``directory``."""
    global REGISTRY_DIR
    previous, REGISTRY_DIR = REGISTRY_DIR, Path(directory)
    try:
        yield REGISTRY_DIR
    finally:
        REGISTRY_DIR = previous


_CACHE: dict[Path, tuple[Any, Registry]] = {}


def load_registry(directory: str | Path | None = None) -> Registry:
    """Load and validate the registry in ``directory`` (default: ``REGISTRY_DIR``).

    Cached per directory until models.yaml or the file list of configs/ changes.
    """
    directory = Path(directory if directory is not None else REGISTRY_DIR).resolve()
    stamp = _stamp(directory)
    cached = _CACHE.get(directory)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    registry = _load(directory)
    _CACHE[directory] = (stamp, registry)
    return registry


def _stamp(directory: Path) -> Any:
    files = [directory / MODELS_FILE, *sorted((directory / CONFIGS_DIR).glob("*.yaml"))]
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.is_file())


def _load(directory: Path) -> Registry:
    models_path = directory / MODELS_FILE
    if not models_path.is_file():
        raise ConfigError(
            f"Model registry not found: {models_path} does not exist. A registry directory "
            f"holds {MODELS_FILE} and {CONFIGS_DIR}/."
        )
    data, lines = load_yaml_mapping(models_path)
    try:
        parsed = RegistryFile.model_validate(data)
    except ValidationError as exc:
        raise _schema_error(exc, data, lines, models_path) from None
    for index, entry in enumerate(parsed.models):
        entry._index = index
    registry = Registry(directory, parsed.models, parsed.templates, parsed.description, lines)
    registry.version = parsed.version
    problems = _reference_problems(registry)
    fragment_problems = _load_fragments(registry)
    if parsed.version == 1:
        problems += [p for found in fragment_problems.values() for p in found]
    else:  # upstream registries hold bring-up files: an entry fails, not the whole registry
        registry.file_problems = fragment_problems
    if problems:
        raise ConfigError(f"Invalid model registry {models_path}:\n  " + "\n  ".join(problems))
    return registry


def _schema_error(exc: ValidationError, data: dict, lines: dict, path: Path) -> ConfigError:
    from .schema import ArchitecturePattern, Deployment, DeviceSettings

    models = {"": RegistryFile, "models": RegistryEntry, "deployments": Deployment}
    models.update({"device_settings": DeviceSettings, "architecture": ArchitecturePattern})
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = _dotted(loc)
        line = _nearest_line(lines, loc)
        where = f"line {line}: " if line else ""
        entry = _entry_name(data, loc)
        message = str((err.get("ctx") or {}).get("error") or err["msg"])
        if err["type"] == "extra_forbidden":
            message = unknown_key_text(str(loc[-1]), _owner_model(loc[:-1], models))
        elif err["type"] == "missing":
            message = "required key missing"
        problems.append(f"{where}{dotted}{entry}: {message}")
    return ConfigError(f"Invalid model registry {path}:\n  " + "\n  ".join(problems))


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _nearest_line(lines: dict[KeyPath, int], loc: tuple[Any, ...]) -> int | None:
    """The line of ``loc``, else of the nearest thing above it (a list item: its first key)."""
    for cut in range(len(loc), 0, -1):
        prefix = loc[:cut]
        if prefix in lines:
            return lines[prefix]
        inside = [line for path, line in lines.items() if path[:cut] == prefix]
        if inside:
            return min(inside)
    return None


def _entry_name(data: dict, loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        models = data.get("models")
        if isinstance(models, list) and loc[1] < len(models) and isinstance(models[loc[1]], dict):
            name = models[loc[1]].get("name")
            if name:
                return f" (entry {name!r})"
    return ""


def _owner_model(loc: tuple[Any, ...], models: dict[str, Any]) -> Any:
    """The schema class that owns the key at ``loc``: named by the last string key above it
    (list indices and device_settings' world sizes are ints)."""
    names = [part for part in loc if isinstance(part, str)]
    return models.get(names[-1] if names else "")


def _reference_problems(registry: Registry) -> list[str]:
    problems = []
    configs = registry.configs_path
    present = sorted(p.name for p in configs.glob("*.yaml")) if configs.is_dir() else []
    used: set[str] = set()
    seen: dict[tuple[str, str], RegistryEntry] = {}
    for entry in registry.entries:
        key = (entry.name, entry.config_id)
        if key in seen:
            first = registry.line(seen[key], "name")
            problems.append(
                f"line {registry.line(entry, 'name')}: entry {entry.name!r} with config_id "
                f"{entry.config_id!r} is already defined at line {first}; (name, config_id) "
                "must be unique (give the variant its own config_id)."
            )
        seen.setdefault(key, entry)
        listed = [
            (name, position, file)
            for name in ("ad_defaults", "user_configs", "yaml_extra")
            for position, file in enumerate(getattr(entry, name))
        ]
        for list_name, position, file in listed:
            line = registry.line(entry, list_name, position)
            used.add(file)
            if file in registry.templates:
                problems.append(
                    f"line {line}: entry {entry.label!r} lists {file!r}, which is a template "
                    f"({registry.templates[file]}); remove it from templates once it can be "
                    "used, or drop it from the entry."
                )
            elif not registry.file_path(file).is_file():
                problems.append(
                    f"line {line}: entry {entry.label!r} lists {file!r}, which is not in "
                    f"{configs}.{did_you_mean(file, present)}"
                )
    for file in registry.templates:
        if file not in present:
            problems.append(
                f"templates: {file!r} is not in {configs}.{did_you_mean(file, present)}"
            )
    for file in present if registry.version == 1 else []:  # 2.0: bring-up files are normal
        if file not in used and file not in registry.templates:
            problems.append(
                f"{CONFIGS_DIR}/{file} is not used by any entry. Add it to an entry's "
                "yaml_extra, list it under templates: with the reason, or delete it."
            )
    return problems


def _load_fragments(registry: Registry) -> dict[str, list[str]]:
    """Load every listed file; the problems found, per file."""
    from ..settings import LlmArgs  # lazy: settings imports this package
    from ..upstream import is_upstream_top_level_key

    fields = list(LlmArgs.model_fields)
    found: dict[str, list[str]] = {}
    for file in sorted({f for e in registry.entries for f in e.files} | set(registry.templates)):
        path = registry.file_path(file)
        if not path.is_file():
            continue  # reported by _reference_problems
        problems = found.setdefault(file, [])
        try:
            layer = yaml_file_layer(path, SOURCE_PREFIX + file)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        for key, value in layer.values.items():
            line = layer.lines.get((key,), "?")
            if key not in LlmArgs.model_fields and is_upstream_top_level_key(key):
                continue  # translated (mapped or reported) when the layer is used
            if key not in LlmArgs.model_fields:
                problems.append(
                    f"{path}, line {line}: {key!r} is not an autodeploy setting."
                    f"{did_you_mean(key, fields)}"
                )
            elif key in CALLER_CHOSEN_KEYS:
                problems.append(
                    f"{path}, line {line}: {key!r} cannot be set by a registry file; only the "
                    "caller chooses it."
                )
            elif key == "trust_remote_code" and value is not False:
                problems.append(
                    f"{path}, line {line}: a registry file cannot enable trust_remote_code "
                    "(it runs Python code shipped with the checkpoint). Remove the key; users "
                    "who trust the model turn trust_remote_code on in their own settings."
                )
        registry.fragments[file] = layer
    return {file: problems for file, problems in found.items() if problems}
