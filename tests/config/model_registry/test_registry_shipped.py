"""The registry that ships with the package: schema, referential integrity, every entry composes.

The integrity checks here read models.yaml and configs/ directly (yaml.safe_load, os listing),
independently of the loader, so a loader bug cannot hide a broken registry.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
import yaml

from autodeploy.config.model_registry import PACKAGE_DIR, load_registry
from autodeploy.config.model_registry.validation import (
    architecture_problems,
    compose_entry,
    compose_problems,
)

RAW = yaml.safe_load((PACKAGE_DIR / "models.yaml").read_text())
CONFIG_FILES = sorted(p.name for p in (PACKAGE_DIR / "configs").glob("*.yaml"))
REGISTRY = load_registry(PACKAGE_DIR)
ENTRY_IDS = [entry.label for entry in REGISTRY.entries]


def test_shipped_registry_loads_and_has_the_target_families():
    assert len(REGISTRY.entries) == len(RAW["models"])
    names = " ".join(REGISTRY.names()).lower()
    for family in (
        "llama-2", "llama-3.1", "llama-3.2", "llama-3.3", "mistral-7b", "mixtral", "qwen2.5",
        "qwen3-8b", "qwen3-30b-a3b", "phi-3", "phi-4", "gemma-2", "gemma-3", "granite",
        "starcoder2", "deepseek-r1-distill", "nemotron-h", "nemotron-nano", "bamba",
    ):  # fmt: skip
        assert family in names, family


def test_every_config_file_is_used_or_a_template_and_every_listed_file_exists():
    used = {file for entry in RAW["models"] for file in entry["yaml_extra"]}
    templates = set(RAW.get("templates", {}))
    assert used | templates == set(CONFIG_FILES)
    assert not used & templates


def test_name_and_config_id_are_unique():
    keys = [(e["name"], e.get("config_id", "default")) for e in RAW["models"]]
    assert len(keys) == len(set(keys))


def test_every_entry_starts_from_dashboard_default_and_has_one_world_size():
    for entry in RAW["models"]:
        files = entry["yaml_extra"]
        assert files[0] == "dashboard_default.yaml", entry["name"]
        assert len([f for f in files if f.startswith("world_size_")]) == 1, entry["name"]


def test_no_registry_file_enables_trust_remote_code():
    for name in CONFIG_FILES:
        data = yaml.safe_load((PACKAGE_DIR / "configs" / name).read_text()) or {}
        assert data.get("trust_remote_code") in (None, False), name


def test_disabled_entries_say_what_is_missing():
    disabled = [e for e in RAW["models"] if "disabled_reason" in e]
    assert disabled, "the registry lists models that cannot run yet"
    for entry in disabled:
        assert "needs" in entry["disabled_reason"], entry["name"]


def test_registry_files_are_package_data():
    """pyproject's package-data globs cover models.yaml and every config file."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((PACKAGE_DIR.parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["autodeploy"]
    package_root = PACKAGE_DIR.parents[1]
    files = [PACKAGE_DIR / "models.yaml"] + [PACKAGE_DIR / "configs" / n for n in CONFIG_FILES]
    for path in files:
        relative = path.relative_to(package_root).as_posix()
        assert any(fnmatch.fnmatchcase(relative, g) and _same_depth(relative, g) for g in globs), (
            relative
        )


def _same_depth(relative: str, glob: str) -> bool:  # setuptools' '*' does not cross '/'
    return relative.count("/") == glob.count("/")


@pytest.mark.parametrize("entry", REGISTRY.entries, ids=ENTRY_IDS)
def test_every_entry_composes_without_touching_the_network(entry, monkeypatch):
    """Disabled entries too: their files only name what exists today (templates aside)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = compose_entry(REGISTRY, entry)
    sources = args.layer_sources()
    assert sources[1 : 1 + len(entry.yaml_extra)] == [f"registry:{f}" for f in entry.yaml_extra]
    assert args.world_size in (1, 2, 4, 8)
    assert compose_problems(REGISTRY, entry) == []  # each known-good deployment too


@pytest.mark.parametrize(
    "entry", [e for e in REGISTRY.entries if e.architecture], ids=lambda e: e.label
)
def test_architecture_patterns_name_real_config_attributes(entry):
    assert architecture_problems(entry) == []


def test_architecture_check_catches_a_misspelled_attribute():
    from autodeploy.config.model_registry import ArchitecturePattern, RegistryEntry

    entry = RegistryEntry(
        name="x/y",
        yaml_extra=["a.yaml"],
        architecture=ArchitecturePattern(model_type="llama", hiden_size=1),
    )
    assert architecture_problems(entry) == [
        "architecture.hiden_size: LlamaConfig has no attribute 'hiden_size'"
    ]
    unknown = entry.model_copy(update={"architecture": ArchitecturePattern(model_type="nope_x")})
    assert "unknown to transformers" in architecture_problems(unknown)[0]


def test_shipped_patterns_do_not_shadow_each_other_by_accident():
    """Two entries with the same pattern: the later is reachable by name only, which must be a
    variant of the same model (a config_id), not a different model."""
    seen: dict[str, str] = {}
    for entry in REGISTRY.entries:
        if entry.architecture is None:
            continue
        key = json.dumps(entry.architecture.model_dump(), sort_keys=True)
        if key in seen:
            assert seen[key] == entry.name, (seen[key], entry.name)
        seen.setdefault(key, entry.name)


def test_package_dir_is_the_default_registry():
    from autodeploy.config.model_registry import loader

    assert Path(loader.REGISTRY_DIR) == PACKAGE_DIR
