"""Dump directories: a dump removes and overwrites only the files it wrote itself."""

from __future__ import annotations

import pytest
import torch

from autodeploy.transforms.instruments import GraphDumpInstrument, TransformRecord
from autodeploy.transforms.interface import Stages
from autodeploy.utils.dump_dir import MANIFEST_NAME, DumpDirectory
from autodeploy.utils.errors import ConfigError


def _dump(directory, names):
    instrument = GraphDumpInstrument(directory)
    instrument.on_build_start({"transforms": {}})
    for index, name in enumerate(names, start=1):
        record = TransformRecord(index=index, name=name, stage=Stages.EXPORT, status="ran")
        instrument.after(record, torch.nn.Identity())


def test_a_new_dump_keeps_the_users_files_and_removes_its_own(tmp_path):
    # The user's own file named like a dump used to be deleted by the next dump.
    (tmp_path / "001_x.txt").write_text("my notes")
    (tmp_path / "notes.md").write_text("mine")
    _dump(tmp_path, ["build_model", "export_to_gm"])
    assert (tmp_path / "002_export_to_gm.txt").is_file()
    _dump(tmp_path, ["build_model"])  # a shorter pipeline: the old 002 file goes
    assert not (tmp_path / "002_export_to_gm.txt").exists()
    assert (tmp_path / "001_build_model.txt").is_file()
    assert (tmp_path / "001_x.txt").read_text() == "my notes"
    assert (tmp_path / "notes.md").read_text() == "mine"
    listed = (tmp_path / MANIFEST_NAME).read_text().split()
    assert sorted(listed) == ["001_build_model.txt", "config.yaml"]


def test_a_user_file_with_a_dump_name_is_not_overwritten(tmp_path):
    (tmp_path / "config.yaml").write_text("mine: 1\n")
    with pytest.raises(ConfigError, match="was not written by an autodeploy dump"):
        _dump(tmp_path, ["build_model"])
    assert (tmp_path / "config.yaml").read_text() == "mine: 1\n"


def test_manifest_names_cannot_leave_the_directory(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    inner = tmp_path / "dump"
    inner.mkdir()
    (inner / MANIFEST_NAME).write_text("../outside.txt\n")
    DumpDirectory(inner).clear_previous()
    assert outside.read_text() == "keep"
