"""Model registry test fixtures: the real pipeline, and small registries written on the fly.

Overrides tests/config's ``config_isolation``: registry files name real transforms and the real
shortcut targets, so these tests run against the real default.yaml. They never depend on what
default.yaml contains beyond the transforms the registry files configure.
"""

from __future__ import annotations

import itertools
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from registry_samples import SMALL_CONFIGS, SMALL_MODELS_YAML

from autodeploy.config.model_registry import loader

_COUNTER = itertools.count()


@pytest.fixture(autouse=True)
def config_isolation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AUTODEPLOY_* settings, cwd = tmp_path; the real default.yaml and shortcuts."""
    for name in list(os.environ):
        if name.startswith("AUTODEPLOY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def make_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """make_registry(models_yaml, {file: text}) -> its directory, which use_registry now reads."""

    def make(models_yaml: str, configs: dict[str, str]) -> Path:
        root = tmp_path / f"registry_{next(_COUNTER)}"
        (root / "configs").mkdir(parents=True)
        (root / "models.yaml").write_text(textwrap.dedent(models_yaml))
        for name, text in configs.items():
            (root / "configs" / name).write_text(textwrap.dedent(text))
        monkeypatch.setattr(loader, "REGISTRY_DIR", root)
        return root

    return make


@pytest.fixture
def small_registry(make_registry: Callable[..., Path]) -> Path:
    return make_registry(SMALL_MODELS_YAML, SMALL_CONFIGS)
