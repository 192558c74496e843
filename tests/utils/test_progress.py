"""The compact default output: stage lines, progress bars, transform details only at DEBUG."""

from __future__ import annotations

import io
import logging

import pytest

from autodeploy.utils import logger as logger_module
from autodeploy.utils.logger import log_prefix, logger
from autodeploy.utils.progress import ProgressBar, StageProgress, format_bytes


@pytest.fixture
def info_level():
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_shows_bytes_percent_and_eta(info_level):
    stream = FakeTerminal()
    bar = ProgressBar("loading", 4 * 2**30, unit="bytes", stream=stream)
    bar.advance(2**30)
    line = bar.render(now=bar._start + 10.0)  # a quarter in 10 s: 30 s to go
    assert "1.0 GiB/4.0 GiB" in line and " 25%" in line and "ETA 0:30" in line
    bar.close()
    assert stream.getvalue().rstrip().endswith("loading: 1.0 GiB in 0.0 s")


def test_bar_is_two_lines_in_a_log_and_silent_at_warning():
    stream = io.StringIO()
    with ProgressBar("capturing 3 CUDA graphs", 3, stream=stream) as bar:  # suite: WARNING
        bar.advance()
    assert stream.getvalue() == ""
    logger.setLevel(logging.INFO)
    try:
        with ProgressBar("capturing 3 CUDA graphs", 3, stream=stream) as bar:
            for _ in range(3):
                bar.advance()
    finally:
        logger.setLevel(logging.WARNING)
    lines = stream.getvalue().splitlines()
    assert lines == ["[autodeploy] capturing 3 CUDA graphs: 3 ...", lines[1]]
    assert lines[1].startswith("[autodeploy] capturing 3 CUDA graphs: 3 in ")


def test_stage_lines_as_the_build_passes_them(info_level):
    stream = io.StringIO()
    stages = StageProgress(["factory", "export", "compile"], stream=stream)
    for stage in ["factory", "export", "export", "compile"]:
        stages.enter(stage)
    stages.finish()
    lines = stream.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "2 transforms" in lines[1] and "1 transform," in lines[0]


def test_transform_details_are_debug_only(info_level):
    # About 75 INFO lines used to precede the completions: every transform's line and details.
    stream = io.StringIO()
    handler = next(h for h in logger.handlers if getattr(h, "_autodeploy", False))
    old_stream = handler.setStream(stream)
    try:
        logger.info("building x")
        with log_prefix("[stage=export, transform=export_to_gm]"):
            logger.info("a transform detail")
            logger.warning("a transform warning")
        logger.setLevel(logging.DEBUG)
        with log_prefix("[stage=export, transform=export_to_gm]"):
            logger.info("shown at debug")
    finally:
        handler.setStream(old_stream)
    text = stream.getvalue()
    assert "building x" in text and "a transform warning" in text and "shown at debug" in text
    assert "a transform detail" not in text
    assert logger_module._rank == 0


def test_format_bytes():
    assert [format_bytes(n) for n in (12, 2048, 3 * 2**20)] == ["12 B", "2.0 KiB", "3.0 MiB"]
