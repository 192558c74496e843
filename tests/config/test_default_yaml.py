"""The packaged default.yaml: shape, stage order, headings, and that it validates; the real
pipeline is checked against the transforms' declared stages and facts when it loads."""

from __future__ import annotations

import os
import re

import pytest

from autodeploy.config import LlmArgs, load_yaml_mapping
from autodeploy.config.layers import DEFAULT_YAML_PATH
from autodeploy.tools import build_and_run
from autodeploy.transforms import BaseTransform, Stages, TransformInfo, TransformRegistry
from autodeploy.utils.errors import ConfigError


@pytest.fixture(autouse=True)
def config_isolation(monkeypatch):
    """Overrides conftest's fixture: the real default.yaml, but no AUTODEPLOY_* settings."""
    for name in list(os.environ):
        if name.startswith("AUTODEPLOY_"):
            monkeypatch.delenv(name)


def test_default_yaml_lists_transforms_grouped_by_stage():
    data, _ = load_yaml_mapping(DEFAULT_YAML_PATH)
    assert list(data) == ["transforms"]
    stages = []
    for name, entry in data["transforms"].items():
        assert isinstance(entry, dict) and "stage" in entry, name
        stages.append(Stages(entry["stage"]))
    assert stages == sorted(stages), "transforms must be listed under their stage, in stage order"


def test_default_yaml_has_one_heading_per_stage_in_order():
    text = DEFAULT_YAML_PATH.read_text()
    headings = re.findall(r"^  # ---- (\w+):", text, flags=re.M)
    assert headings == [stage.value for stage in Stages]


def test_default_yaml_validates():
    data, _ = load_yaml_mapping(DEFAULT_YAML_PATH)
    missing = [name for name in data["transforms"] if not TransformRegistry.has(name)]
    assert not missing, f"default.yaml names unregistered transforms: {', '.join(missing)}"
    args = LlmArgs()
    assert list(args.transforms) == list(data["transforms"])
    assert args.provenance()["transforms.build_model.stage"] == "default.yaml"


def test_default_yaml_restates_the_declared_stages_and_its_order_agrees_with_the_facts():
    from autodeploy.transforms.registry import validate_pipeline

    data, _ = load_yaml_mapping(DEFAULT_YAML_PATH)
    for name, entry in data["transforms"].items():
        assert Stages(entry["stage"]) is TransformRegistry.get(name).stage, name
    # Ordering by the declared facts keeps the listed order: nothing had to move.
    assert [name for name, _ in validate_pipeline(data["transforms"])] == list(data["transforms"])


def test_cached_attention_in_post_export_is_refused_on_load_naming_both_transforms():
    with pytest.raises(ConfigError) as err:
        LlmArgs(transforms={"insert_cached_attention": {"stage": "post_export"}})
    message = str(err.value)
    assert (
        "transforms.insert_cached_attention.stage: insert_cached_attention runs in stage "
        in message
    )
    assert "'cache_init' (declared by the transform), not 'post_export'" in message
    assert "(from kwargs)" in message  # where the wrong value came from
    assert "requires 'weights loaded'" in message and "load_weights (stage weight_load)" in message


def test_weight_loading_moved_after_cached_attention_is_refused_on_load():
    with pytest.raises(ConfigError) as err:
        LlmArgs(transforms={"load_weights": {"stage": "compile"}})
    message = str(err.value)
    assert "load_weights runs in stage 'weight_load'" in message
    assert (
        "transforms.insert_cached_attention: insert_cached_attention (stage cache_init) " in message
    )
    assert "load_weights (stage compile) provides" in message


def test_disabling_weight_loading_is_refused_while_cached_attention_needs_it():
    with pytest.raises(ConfigError) as err:
        LlmArgs(transforms={"load_weights": {"enabled": False}})
    message = str(err.value)
    assert "insert_cached_attention (stage cache_init) requires 'weights loaded'" in message
    assert "only load_weights provides, and it is disabled" in message


def test_dry_run_reports_a_misplaced_transform_before_building(capsys):
    argv = ["--dry-run", "--args.transforms.insert_cached_attention.stage=post_export"]
    assert build_and_run.main(argv) == 2
    err = capsys.readouterr().err
    assert "insert_cached_attention" in err and "load_weights" in err and "cache_init" in err


@TransformRegistry.register("_decl_cfg_plugin_pass")
class _PluginPass(BaseTransform):
    """A plugin's transform that declares its stage (not in default.yaml)."""

    stage = Stages.POST_EXPORT

    def _apply(self, gm, cm, factory, shared_config):
        return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)


def test_a_layer_may_leave_out_a_declared_stage():
    args = LlmArgs(transforms={"_decl_cfg_plugin_pass": {"enabled": True}})
    assert args.transforms["_decl_cfg_plugin_pass"]["stage"] == "post_export"
    assert args.provenance()["transforms._decl_cfg_plugin_pass.stage"] == "default"
    assert args.provenance()["transforms._decl_cfg_plugin_pass.enabled"] == "kwargs"
