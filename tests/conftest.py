"""Suite-wide settings: graph verification after every transform; GPU tests skip without CUDA."""

import os
import sys

# Shared test helpers (tiny_models.py) live next to this file.
sys.path.insert(0, os.path.dirname(__file__))

# Before autodeploy is imported anywhere: every transform's output graph is linted and re-generated.
os.environ.setdefault("AUTODEPLOY_VERIFY_GRAPHS", "1")
os.environ.setdefault("AUTODEPLOY_LOG_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
