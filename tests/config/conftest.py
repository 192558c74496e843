"""Fixtures for configuration tests: dummy transforms, an isolated default.yaml and environment.

The dummy transforms are registered once, when pytest imports this conftest (the registry refuses
a second registration of a name with a different class). Tests never depend on the contents of
the real default.yaml, except tests/config/test_default_yaml.py.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import Field
from torch import nn

from autodeploy.config import layers, shortcuts
from autodeploy.transforms import BaseTransform, TransformConfig, TransformInfo, TransformRegistry


class _Noop(BaseTransform):
    def _apply(self, gm: nn.Module, cm, factory, shared_config) -> tuple[nn.Module, TransformInfo]:
        return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)


class BackendConfig(TransformConfig):
    backend: str = Field(default="torch", description="Backend name.")
    strict: bool = Field(default=False, description="A flag.")
    sizes: list[int] = Field(default_factory=lambda: [1, 2], description="A list.")
    options: dict[str, int] = Field(default_factory=dict, description="A mapping.")


class DummyA(_Noop):
    """Test transform with the base config."""


class DummyB(_Noop):
    """Test transform with extra fields."""

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return BackendConfig


class DummyAttention(DummyB):
    """Stands in for insert_cached_attention."""


class DummyCompile(DummyB):
    """Stands in for compile_model."""


TransformRegistry.register("_test_cfg_dummy_a")(DummyA)
TransformRegistry.register("_test_cfg_dummy_b")(DummyB)
TransformRegistry.register("_test_cfg_attention")(DummyAttention)
TransformRegistry.register("_test_cfg_compile")(DummyCompile)

TEST_DEFAULT_YAML = """\
max_batch_size: 4
transforms:
  # export
  _test_cfg_dummy_a:
    stage: export
  # post_export
  _test_cfg_dummy_b:
    stage: post_export
    backend: torch
    sizes: [1, 2, 3]
    options: {x: 1, y: 2}
  # cache_init
  _test_cfg_attention:
    stage: cache_init
    backend: triton
"""

TEST_SHORTCUTS = {
    "attn_backend": shortcuts.ShortcutTarget("_test_cfg_attention", "backend", "cache_init"),
    "compile_backend": shortcuts.ShortcutTarget("_test_cfg_compile", "backend", "compile"),
}


@pytest.fixture(autouse=True)
def config_isolation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A test default.yaml, dummy shortcut targets, no AUTODEPLOY_* settings, cwd = tmp_path."""
    for name in list(os.environ):
        if name.startswith("AUTODEPLOY_"):
            monkeypatch.delenv(name)
    default = tmp_path / "_default.yaml"
    default.write_text(TEST_DEFAULT_YAML)
    monkeypatch.setattr(layers, "DEFAULT_YAML_PATH", default)
    monkeypatch.setattr(shortcuts, "TRANSFORM_SHORTCUTS", dict(TEST_SHORTCUTS))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[[str, str], str]:
    """write_yaml("a.yaml", text) -> the relative path (cwd is tmp_path)."""

    def write(name: str, text: str) -> str:
        (tmp_path / name).write_text(textwrap.dedent(text))
        return name

    return write
