"""Checkpoint loading: corrupt files are named, NaN/Inf weights are caught, one progress bar."""

from __future__ import annotations

import io
import logging

import pytest
import torch
from safetensors.torch import save_file

from autodeploy.models.checkpoint import find_checkpoint_files, iter_checkpoint, load_checkpoint
from autodeploy.utils import progress
from autodeploy.utils.errors import ConfigError
from autodeploy.utils.logger import logger


class TwoLinears(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(4, 4)
        self.second = torch.nn.Linear(4, 4)


def _sharded_checkpoint(directory, second_shard_values=None):
    """Two safetensors shards and their index, as save_pretrained writes them."""
    state = TwoLinears().state_dict()
    first = {k: v for k, v in state.items() if k.startswith("first")}
    second = {k: v for k, v in state.items() if k.startswith("second")}
    if second_shard_values is not None:
        second = {k: torch.full_like(v, second_shard_values) for k, v in second.items()}
    save_file(first, directory / "model-00001-of-00002.safetensors")
    save_file(second, directory / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in second})
    import json

    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return find_checkpoint_files(directory)


@pytest.mark.parametrize("cut", ["header", "data"])
def test_truncated_shard_is_named(tmp_path, cut):
    # It used to surface as a bare SafetensorError ("incomplete metadata") without a file name.
    files = _sharded_checkpoint(tmp_path)
    shard = files[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:6] if cut == "header" else data[:-20])
    with pytest.raises(ConfigError) as info:
        load_checkpoint(TwoLinears(), files)
    message = str(info.value)
    assert "model-00002-of-00002.safetensors" in message and "truncated or corrupt" in message


def test_nan_weights_fail_naming_the_tensor_unless_the_check_is_off(tmp_path):
    # NaN weights used to load silently and generate empty text.
    files = _sharded_checkpoint(tmp_path, second_shard_values=float("nan"))
    with pytest.raises(ConfigError, match=r"'second.bias' .* holds 4 NaN and 0 Inf") as info:
        load_checkpoint(TwoLinears(), files)
    assert "check_weights: false" in str(info.value)
    model = TwoLinears()
    load_checkpoint(model, files, check_weights=False)
    assert torch.isnan(model.second.weight).all()


def test_inf_weights_and_overflowing_sums(tmp_path):
    big = {"first.weight": torch.full((4, 4), 6e4, dtype=torch.float16)}  # sum overflows fp16
    save_file(big, tmp_path / "big.safetensors")
    next(iter_checkpoint([tmp_path / "big.safetensors"]))  # finite values: accepted
    save_file({"w": torch.tensor([1.0, float("-inf")])}, tmp_path / "inf.safetensors")
    with pytest.raises(ConfigError, match="'w' .* 0 NaN and 1 Inf"):
        next(iter_checkpoint([tmp_path / "inf.safetensors"]))


def test_one_progress_bar_with_bytes_for_all_shards(tmp_path, monkeypatch):
    files = _sharded_checkpoint(tmp_path)
    stream = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", stream)
    level = logger.level
    logger.setLevel(logging.INFO)  # progress shows at INFO (the suite runs at WARNING)
    try:
        for _ in iter_checkpoint(files):
            pass
    finally:
        logger.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines  # one start and one end line (not a terminal)
    assert lines[0].startswith("[autodeploy] loading 2 checkpoint file(s): ")
    assert "B in " in lines[1]
