"""Launch errors that need no rank: too few devices, a torchrun launch of another size."""

from __future__ import annotations

import pytest

from autodeploy.config import LlmArgs
from autodeploy.distributed.process_group import launched_by_torchrun, torchrun_context
from autodeploy.runtime.builder import check_supported
from autodeploy.utils.errors import ConfigError


def test_more_ranks_than_gpus_is_a_config_error(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    args = LlmArgs(model="builtin:tiny-llama", device="cuda", world_size=4)
    with pytest.raises(ConfigError, match="world_size=4 needs 4 GPUs on this node but 1 was found"):
        check_supported(args)
    check_supported(LlmArgs(model="builtin:tiny-llama", device="cpu", world_size=4))


def test_registry_world_size_error_says_how_to_override(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    args = LlmArgs(model="meta-llama/Llama-3.1-8B-Instruct", use_registry=True, device="cuda")
    assert args.world_size > 1
    with pytest.raises(ConfigError, match="0 were found.*registry.*world_size=N"):
        check_supported(args)


def test_torchrun_environment_is_detected_and_checked(monkeypatch):
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h"}
    env["MASTER_PORT"] = "1"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launched_by_torchrun()
    context = torchrun_context(4)
    assert (context.rank, context.world_size, context.local_rank) == (1, 4, 1)
    with pytest.raises(ConfigError, match="world_size=2 but torchrun started 4 processes"):
        torchrun_context(2)
    monkeypatch.delenv("MASTER_PORT")
    assert not launched_by_torchrun()
