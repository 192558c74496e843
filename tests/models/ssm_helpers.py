"""Shared by the state-space model tests (Mamba-2 hybrids, with or without experts)."""

from __future__ import annotations

import pytest
from test_greedy_parity import hf_greedy, llm_settings, make_prompts
from tiny_models import save_tiny

from autodeploy import LLM

SSM_NEW_TOKENS = 8  # crosses a chunk boundary of the scan (chunk 8); keeps the suite fast


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """arch -> (LLM on the torch backends with two state slots, HF model, HF greedy tokens of
    ``SSM_NEW_TOKENS`` per prompt); each built on first use, shut down after the module."""
    cache: dict[str, tuple] = {}

    def get(arch: str):
        if arch not in cache:
            path = tmp_path_factory.mktemp(arch)
            model = save_tiny(path, arch)
            expected = [hf_greedy(model, p, SSM_NEW_TOKENS) for p in make_prompts()]
            settings = {**llm_settings("torch"), "max_batch_size": 2}
            cache[arch] = (LLM(model=str(path), **settings), model, expected)
        return cache[arch]

    yield get
    for llm, _, _ in cache.values():
        llm.shutdown()
