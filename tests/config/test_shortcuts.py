"""attn_backend / compile_backend: explicit shortcuts win; otherwise they mirror the transform.

conftest maps the shortcuts onto the dummy transforms _test_cfg_attention (present in the test
default.yaml with backend: triton) and _test_cfg_compile (registered, absent from it).
"""

from __future__ import annotations

import pytest

from autodeploy.config import LlmArgs, shortcuts
from autodeploy.utils.errors import ConfigError


def test_shortcut_is_synced_from_the_transform_when_not_set():
    args = LlmArgs()
    assert args.attn_backend == "triton"
    assert args.provenance()["attn_backend"] == "default.yaml"


def test_explicit_shortcut_overwrites_the_transform():
    args = LlmArgs(attn_backend="flashinfer")
    assert args.attn_backend == "flashinfer"
    assert args.transforms["_test_cfg_attention"] == {
        "stage": "cache_init",
        "backend": "flashinfer",
    }
    assert args.provenance()["transforms._test_cfg_attention.backend"] == "kwargs"


def test_transform_key_from_a_higher_layer_beats_a_lower_shortcut(write_yaml):
    a = write_yaml("a.yaml", "attn_backend: flashinfer\n")
    args = LlmArgs(yaml_extra=[a], transforms={"_test_cfg_attention": {"backend": "torch"}})
    assert args.attn_backend == "torch"
    assert args.transforms["_test_cfg_attention"]["backend"] == "torch"
    assert args.provenance()["attn_backend"] == "kwargs"


def test_shortcut_wins_over_the_transform_key_in_the_same_layer(write_yaml):
    a = write_yaml(
        "a.yaml",
        "attn_backend: flashinfer\ntransforms:\n  _test_cfg_attention:\n    backend: torch\n",
    )
    args = LlmArgs(yaml_extra=[a])
    assert args.attn_backend == "flashinfer"
    assert args.transforms["_test_cfg_attention"]["backend"] == "flashinfer"


def test_shortcut_from_env_beats_transform_key_from_yaml(write_yaml, monkeypatch):
    a = write_yaml("a.yaml", "transforms:\n  _test_cfg_attention:\n    backend: torch\n")
    monkeypatch.setenv("AUTODEPLOY_ATTN_BACKEND", "flashinfer")
    args = LlmArgs(yaml_extra=[a])
    assert args.transforms["_test_cfg_attention"]["backend"] == "flashinfer"
    assert args.provenance()["transforms._test_cfg_attention.backend"] == (
        "env:AUTODEPLOY_ATTN_BACKEND"
    )


def test_cli_shortcut_beats_kwargs_transform_key():
    args = LlmArgs.from_cli(
        {"attn_backend": "flashinfer"}, transforms={"_test_cfg_attention": {"backend": "torch"}}
    )
    assert args.transforms["_test_cfg_attention"]["backend"] == "flashinfer"


def test_absent_transform_and_unset_shortcut_is_fine():
    args = LlmArgs()
    assert "_test_cfg_compile" not in args.transforms
    assert args.compile_backend is None
    assert args.provenance()["compile_backend"] == "default"


def test_explicit_shortcut_creates_entry_of_a_registered_transform():
    args = LlmArgs(compile_backend="torch-cudagraph")
    assert args.transforms["_test_cfg_compile"] == {
        "stage": "compile",
        "backend": "torch-cudagraph",
    }
    assert list(args.transforms)[-1] == "_test_cfg_compile"
    assert args.provenance()["transforms._test_cfg_compile.stage"] == "kwargs"


def test_explicit_shortcut_for_unregistered_transform_is_an_error(monkeypatch):
    monkeypatch.setitem(
        shortcuts.TRANSFORM_SHORTCUTS,
        "compile_backend",
        shortcuts.ShortcutTarget("_test_cfg_not_registered", "backend", "compile"),
    )
    assert LlmArgs().compile_backend is None  # not set: nothing to do, no error
    with pytest.raises(ConfigError) as info:
        LlmArgs(compile_backend="torch-opt")
    text = str(info.value)
    assert (
        "compile_backend='torch-opt' (from kwargs) sets transforms._test_cfg_not_registered" in text
    )
    assert "transform '_test_cfg_not_registered' is not registered" in text


def test_entry_without_the_key_gives_the_config_default():
    args = LlmArgs(transforms={"_test_cfg_compile": {"stage": "compile"}})
    assert args.compile_backend == "torch"  # BackendConfig.backend default
    assert args.provenance()["compile_backend"] == "default"


def test_shortcut_set_to_null_counts_as_unset():
    args = LlmArgs(attn_backend=None)
    assert args.attn_backend == "triton"


def test_shortcut_onto_a_transform_without_that_key_is_reported(monkeypatch):
    monkeypatch.setitem(
        shortcuts.TRANSFORM_SHORTCUTS,
        "attn_backend",
        shortcuts.ShortcutTarget("_test_cfg_dummy_a", "backend", "export"),
    )
    with pytest.raises(ConfigError) as info:
        LlmArgs(attn_backend="x")
    assert "transforms._test_cfg_dummy_a.backend: unknown key." in str(info.value)
    assert "(from kwargs)" in str(info.value)
