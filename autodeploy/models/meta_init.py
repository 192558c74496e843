"""Build a module with parameters on the meta device while buffers stay real.

Parameters are the bulk of a model and come from the checkpoint later; buffers such as RoPE
``inv_freq`` are computed in ``__init__`` and are not in checkpoints, so they must keep their
values. Building under ``torch.device("meta")`` would lose them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn as nn


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]
