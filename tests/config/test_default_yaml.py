"""The packaged default.yaml: shape, stage order, headings, and that it validates."""

from __future__ import annotations

import os
import re

import pytest

from autodeploy.config import LlmArgs, load_yaml_mapping
from autodeploy.config.layers import DEFAULT_YAML_PATH
from autodeploy.transforms import Stages, TransformRegistry


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
