"""What a new user hit at the command line: exit statuses, CUDA without a GPU, closed pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from autodeploy import LLM
from autodeploy.tools import build_and_run, dump_graph, host_overhead
from autodeploy.utils.errors import ConfigError
from autodeploy.utils.exit_codes import EXIT_BAD_INPUT, EXIT_CLOSED_PIPE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_without_a_gpu_is_a_config_error_in_every_entry_point(no_cuda, capsys, tmp_path):
    # It used to end in a pin_memory traceback from shim/sequence_info.py.
    assert build_and_run.main(["--device", "cuda"]) == EXIT_BAD_INPUT
    assert "no CUDA device was found" in capsys.readouterr().err
    assert dump_graph.main(["--device", "cuda", "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    assert host_overhead.main(["--device", "cuda", "--steps", "1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("no CUDA device was found") == 2 and "Traceback" not in err
    with pytest.raises(ConfigError, match=r"device \(from kwargs\): 'cuda:1' was requested"):
        LLM(device="cuda:1")


def test_rejected_prompts_exit_nonzero(capsys):
    # Every prompt was rejected and the tool still exited 0.
    argv = ["--device", "cpu", "--max-seq-len", "4", "--prompt.sp-kwargs.max-tokens", "2"]
    assert build_and_run.main(argv) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "[0] error: prompt 0 needs" in captured.out
    assert "error: 2 of 2 prompts failed" in captured.err


def test_truncated_checkpoint_is_named_with_exit_2(tmp_path, capsys):
    tiny_model("llama").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    argv = ["--model", str(tmp_path), "--device", "cpu", "--stop-after", "load_weights"]
    assert dump_graph.main([*argv, "--out", str(tmp_path / "dump")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"Checkpoint file {str(weights)!r}" in err and "Traceback" not in err


def test_closed_pipe_exits_quietly():
    # `list_transforms | head` printed a BrokenPipeError traceback.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the tool writes: like `head` after its lines
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "autodeploy.tools.list_transforms"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
            timeout=120,
        )
    finally:
        os.close(write_end)
    stderr = proc.stderr.decode()
    assert proc.returncode == EXIT_CLOSED_PIPE, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
