"""Suite-wide settings: graph verification after every transform; GPU tests skip without CUDA."""

import logging
import os
import sys

# Shared test helpers (tiny_models.py) live next to this file.
sys.path.insert(0, os.path.dirname(__file__))

# Before autodeploy is imported anywhere: every transform's output graph is linted and re-generated.
os.environ.setdefault("AUTODEPLOY_VERIFY_GRAPHS", "1")
os.environ.setdefault("AUTODEPLOY_LOG_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


# Without a GPU, Triton kernels run in its interpreter. Triton reads this once, when it is first
# imported (importing autodeploy imports it), so it must be set before any test module loads.
if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist every worker gets one core: more threads only oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def ad_logs(caplog):
    """caplog for the autodeploy logger (which does not propagate to the root logger)."""
    from autodeploy.utils.logger import logger

    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="autodeploy")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
