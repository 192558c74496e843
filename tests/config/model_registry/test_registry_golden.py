"""Golden merged configurations of five representative shipped entries.

A golden file holds what the registry contributes to ``LlmArgs(model=NAME, use_registry=True)``:
the layers applied, the deployment check, and every value a registry layer set, with the value
in effect and the layer that set it. Values from default.yaml or field defaults are left out on
purpose, so that a change to the pipeline elsewhere does not touch these files; a change to a
registry file does, and must be reviewed.

Regenerate after an intended registry change: ``UPDATE_GOLDEN=1 pytest <this file>``, then read
the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from autodeploy.config import LlmArgs
from autodeploy.config.model_registry import (
    PACKAGE_DIR,
    applied_settings,
    loader,
    resolve_registry,
)

GOLDEN_DIR = Path(__file__).with_name("golden")
ENTRIES = [
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0",  # the plain case: baseline + one rank
    "meta-llama/Llama-3.1-8B-Instruct",  # model file + known-good deployment + device settings
    "meta-llama/Llama-3.3-70B-Instruct",  # four ranks + a model file with lists
    "google/gemma-3-1b-it",  # a model file that lowers a baseline value
    "bigcode/starcoder2-15b",  # a backend pin over the baseline
]


def golden_view(name: str) -> dict[str, Any]:
    args = LlmArgs(model=name, use_registry=True)
    plan = resolve_registry(args)
    return {
        "entry": plan.entry.name,
        "config_id": plan.entry.config_id,
        "layers": args.layer_sources(),
        "deployment": plan.deployment.describe(),
        "registry_values": [
            {"setting": r.setting, "applied": r.applied, "source": r.source}
            for r in applied_settings(args, plan)
        ],
    }


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / (re.sub(r"[^A-Za-z0-9.]+", "_", name) + ".yaml")


@pytest.fixture(autouse=True)
def shipped_registry(monkeypatch):
    """The shipped registry; the entries' device-settings variables unset (as on a clean box)."""
    monkeypatch.setattr(loader, "REGISTRY_DIR", PACKAGE_DIR)
    for entry in loader.load_registry(PACKAGE_DIR).entries:
        for settings in entry.all_device_settings():
            for variable in settings.env:
                monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize("name", ENTRIES)
def test_merged_config_matches_golden(name):
    view = golden_view(name)
    path = golden_path(name)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(yaml.safe_dump(view, sort_keys=False, width=100, default_flow_style=None))
    assert path.is_file(), f"{path} missing: run with UPDATE_GOLDEN=1 and review it"
    assert view == yaml.safe_load(path.read_text())


def test_golden_files_are_exactly_the_chosen_entries():
    assert sorted(p.name for p in GOLDEN_DIR.glob("*.yaml")) == sorted(
        golden_path(n).name for n in ENTRIES
    )
