"""Proof that the cached-op contract is open: a plugin adds a new op family with a state cache.

``tests/plugins/running_sum_plugin.py`` (loaded through ``AUTODEPLOY_PLUGINS``; nothing in the
package names it) declares the ``running_sum`` family, its reference backend with one state
per sequence slot, its own metadata region, a cache_init transform and a model factory. A tiny
model with attention and running sums builds through the normal pipeline; its cached steps
equal the uncached eager model for mixed prefill/decode batches and chunked prefill, and it
generates the eager model's greedy tokens. The build summary lists both families.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

PLUGIN_DIR = Path(__file__).parent / "plugins"
PLUGIN = "running_sum_plugin"
YAML = "transforms:\n  insert_cached_running_sum:\n    stage: cache_init\n"
SETTINGS = dict(
    model="running_sum_tiny",
    model_factory="running_sum_tiny",
    device="cpu",
    dtype="float32",
    max_seq_len=32,
    max_num_tokens=32,
    max_batch_size=3,
)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plugin, imported the way a user loads it (AUTODEPLOY_PLUGINS + load_plugins)."""
    sys.path.insert(0, str(PLUGIN_DIR))
    previous = os.environ.get("AUTODEPLOY_PLUGINS")
    os.environ["AUTODEPLOY_PLUGINS"] = PLUGIN
    try:
        from autodeploy.plugins import load_plugins

        load_plugins()
        yield sys.modules[PLUGIN]
    finally:
        sys.path.remove(str(PLUGIN_DIR))
        if previous is None:
            os.environ.pop("AUTODEPLOY_PLUGINS")
        else:
            os.environ["AUTODEPLOY_PLUGINS"] = previous
        _forget_plugin()


def _forget_plugin() -> None:
    """Take the plugin's names out of the registries again, so later tests in this process
    (e.g. list_transforms, which compares with a fresh process) see only the built-ins. The
    registries have no public removal on purpose (a plugin must not remove a built-in)."""
    from autodeploy.custom_ops.op_backend import BackendRegistry
    from autodeploy.models.factory import ModelFactoryRegistry
    from autodeploy.transforms import TransformRegistry

    for registry in (TransformRegistry, ModelFactoryRegistry):
        for name in [n for n, origin in registry._origins.items() if origin == PLUGIN]:
            del registry._entries[name], registry._origins[name]
    BackendRegistry._families.pop("running_sum", None)
    BackendRegistry._backends.pop("running_sum", None)
    for key in [k for k in BackendRegistry._origins if k[0] == "running_sum"]:
        del BackendRegistry._origins[key]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def llm(plugin, tmp_path_factory):
    """One build through the normal pipeline (``LLM``), with the build's log lines."""
    from autodeploy import LLM
    from autodeploy.utils.logger import logger

    extra = tmp_path_factory.mktemp("plugin") / "extra.yaml"
    extra.write_text(YAML)
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        built = LLM(**SETTINGS, yaml_extra=[str(extra)])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    built.build_log = "\n".join(handler.lines)
    yield built
    built.shutdown()


def test_graph_has_both_families_and_the_plugin_state(plugin, llm):
    from autodeploy.custom_ops.backend_resolver import format_backend_table, recorded_choices
    from autodeploy.transforms.graph_utils import count_ops

    gm, cm = llm.model, llm.cm
    cached_sum = torch.ops.running_sum_plugin.torch_cached_running_sum
    assert count_ops(gm, cached_sum) == 2
    assert count_ops(gm, torch.ops.running_sum_plugin.torch_running_sum) == 0
    assert count_ops(gm, torch.ops.auto_deploy.sdpa_cached_attention) == 2  # auto on CPU
    states = {k: h for k, h in cm.resources.items() if k.startswith("state_")}
    assert len(states) == 2 and all(not h.is_paged for h in states.values())
    assert cm.caches["state_0"].shape == (cm.info.max_batch_size + 1, plugin.HIDDEN)
    assert cm.bytes_per_slot == 2 * plugin.HIDDEN * 4
    assert plugin.FRESH in cm.info.active_args
    choices = recorded_choices(gm)
    assert {(c["family"], c["backend"]) for c in choices} >= {
        ("attention", "sdpa"),  # auto on CPU
        ("running_sum", "torch"),
    }
    table = format_backend_table(choices)
    assert "running_sum  torch" in table and "attention    sdpa" in table
    assert "backends per op family:\n" + table in llm.build_log  # the build summary shows it


def _run(gm, cm, slots, history, schedule):
    """One step: ``schedule`` = [(seq, new tokens)], prefill first; disjoint pages per sequence.
    Returns the logits of each sequence's last new token."""
    page_size = cm.page_size
    ids, pos, pages, slot_idx = [], [], [], []
    for seq, new in schedule:
        start = len(history[seq])
        needed = -(-(start + len(new)) // page_size)
        first = 1 + seq * cm.info.max_pages_per_seq  # disjoint page ranges per sequence
        ids.append(new), pos.append(start), slot_idx.append(slots[seq])
        pages.append(list(range(first, first + needed)))
        history[seq] = history[seq] + new
    cm.info.nest_sequences(ids, pos, pages, slot_idx=slot_idx)
    with torch.inference_mode():
        logits = gm(**cm.named_args)
    return cm.info.gather_last_logits(logits)  # [sequences, vocab]


def test_llm_generates_the_eager_greedy_tokens(plugin, llm):
    """The runtime's continuous batching: two 20-token prompts with a 32-token step budget
    (the second is prefilled in two chunks, the second chunk next to a decode), then a short
    prompt that joins the decoding ones."""
    from autodeploy import SamplingParams

    prompts = [list(range(3, 23)), list(range(30, 50)), [9, 8, 7, 6, 5]]
    outs = llm.generate(prompts, SamplingParams(max_tokens=6, temperature=0.0))
    model = plugin.reference_model()
    for prompt, out in zip(prompts, outs):
        tokens = list(prompt)
        for _ in range(6):
            with torch.no_grad():
                logits = model(torch.tensor([tokens]), torch.arange(len(tokens))[None])
            tokens.append(int(logits[0, -1].argmax()))
        assert list(out.outputs[0].token_ids) == tokens[len(prompt) :]


def test_cached_steps_equal_the_uncached_model(plugin, llm):
    """Chunked prefill, a prompt joining decodes, slots that are not the row order."""
    gm, cm = llm.model, llm.cm
    reference = plugin.reference_model()
    torch.manual_seed(1)
    prompts = {s: torch.randint(0, plugin.VOCAB, (n,)).tolist() for s, n in enumerate((9, 7, 5))}
    slots = {0: 2, 1: 0, 2: 1}
    history: dict[int, list[int]] = {0: [], 1: [], 2: []}
    steps = [
        [(0, prompts[0]), (1, prompts[1][:3])],  # seq 1: first chunk of its prompt
        [(1, prompts[1][3:]), (0, [5])],  # chunked-prefill continuation + a decode
        [(2, prompts[2]), (0, [7]), (1, [3])],  # a new prompt joins two decodes
        [(0, [1]), (1, [2]), (2, [4])],  # decode only
    ]
    for schedule in steps:
        last = _run(gm, cm, slots, history, schedule)
        for row, (seq, _) in enumerate(schedule):
            tokens = torch.tensor([history[seq]])
            with torch.no_grad():
                expected = reference(tokens, torch.arange(tokens.shape[1])[None])[0, -1]
            torch.testing.assert_close(last[row], expected, atol=1e-4, rtol=1e-4)
