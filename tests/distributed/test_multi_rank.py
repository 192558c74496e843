"""Several ranks on CPU (gloo): greedy tokens equal Hugging Face eager, failures end the job.

Each LLM starts its worker ranks as fresh interpreters; every test checks that none is left.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny

from autodeploy import LLM, SamplingParams
from autodeploy.plugins import load_plugins
from autodeploy.runtime.all_token_logits import find_graph_module
from autodeploy.utils.errors import DistributedError, EngineDeadError

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42]]
NEW_TOKENS = 6
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
SETTINGS = dict(
    device="cpu",
    attn_backend="torch",
    max_seq_len=32,
    max_batch_size=2,
    kv_cache_config={"tokens_per_block": 4, "max_tokens": 128},
)


def hf_greedy(model: torch.nn.Module, prompt: list[int]) -> list[int]:
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def worker_pids() -> list[int]:
    """Live worker ranks started by this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and b"autodeploy.distributed.worker" in cmdline:
            if stat[0] != "Z":
                found.append(int(entry.name))
    return found


def checkpoint(tmp_path: Path, arch: str) -> tuple[Path, list[list[int]]]:
    model = save_tiny(tmp_path, arch)
    return tmp_path, [hf_greedy(model, p) for p in PROMPTS]


def tokens(llm: LLM) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in llm.generate(PROMPTS, GREEDY)]


QWEN3_PLAN = {
    "head_dim": 16,
    "tp_plan": {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
        "lm_head": "gather",
    },
}
# Each architecture also exercises one way of planning (llama: the default sources, below).
PLANS = {
    "qwen3": {"manual_config": QWEN3_PLAN, "sharding_source": ["manual"]},
    "gemma2": {"simple_shard_only": True},  # sliding window + soft-caps; every linear gathered
    "phi3": {},  # fused qkv / gate_up: the HF plan's values are not ours, the heuristic splits
    "gpt_neox": {"sharding_source": ["heuristic"]},  # interleaved heads, biases
}


@pytest.mark.parametrize("arch", list(PLANS))
def test_two_ranks_match_hugging_face(tmp_path, arch):
    path, expected = checkpoint(tmp_path, arch)
    transforms = {"detect_sharding": {"stage": "sharding", **PLANS[arch]}}
    with LLM(str(path), world_size=2, transforms=transforms, **SETTINGS) as llm:
        assert len(worker_pids()) == 1
        assert tokens(llm) == expected
    assert worker_pids() == []  # leaving the with block stopped the worker


def test_four_ranks_replicate_kv_heads_and_match(tmp_path):
    """Tiny Llama has 2 KV heads: over 4 ranks each KV head lives on two ranks."""
    path, expected = checkpoint(tmp_path, "llama")
    with LLM(str(path), world_size=4, **SETTINGS) as llm:
        assert tokens(llm) == expected
        plan = find_graph_module(llm.model).meta["sharding_plan"]
        assert any("2 KV heads replicated over 4 ranks" in note for note in plan.notes)
    assert worker_pids() == []


def test_killed_worker_ends_the_job_naming_the_rank(tmp_path):
    path, expected = checkpoint(tmp_path, "llama")
    llm = LLM(str(path), world_size=2, **SETTINGS)
    try:
        assert tokens(llm) == expected
        (pid,) = worker_pids()
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        outputs = llm.generate(PROMPTS, GREEDY)  # the requests of the failed step end in error
        assert time.monotonic() - start < 30
        for output in outputs:
            assert output.outputs[0].finish_reason == "error"
            assert re.search("rank 1 failed: .*SIGKILL", output.outputs[0].error)
        with pytest.raises(EngineDeadError, match="DistributedError: rank 1 failed"):
            tokens(llm)
    finally:
        llm.shutdown()
    assert worker_pids() == []


def test_rank_that_raises_while_building_is_named(tmp_path, monkeypatch):
    path, _ = checkpoint(tmp_path, "llama")
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("AUTODEPLOY_PLUGINS", "failing_rank_plugin")
    monkeypatch.syspath_prepend(here)
    load_plugins()  # the settings must know the transform before they validate
    transforms = {"fail_on_rank_one": {"stage": "sharding"}}
    with pytest.raises(
        DistributedError, match="rank 1 failed to build: .*RuntimeError: boom on rank one"
    ):
        LLM(str(path), world_size=2, transforms=transforms, **SETTINGS)
    deadline = time.monotonic() + 15
    while worker_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker_pids() == []


def test_rank_that_fails_before_joining_is_named(tmp_path, monkeypatch):
    """A worker that cannot even start (a plugin it cannot import) ends the job at once."""
    path, _ = checkpoint(tmp_path, "llama")
    monkeypatch.setenv("AUTODEPLOY_PLUGINS", "no_such_plugin_module")
    start = time.monotonic()
    with pytest.raises(DistributedError, match="rank 1 failed: .*no_such_plugin_module"):
        LLM(str(path), world_size=2, **SETTINGS)
    assert time.monotonic() - start < 120
    assert worker_pids() == []
