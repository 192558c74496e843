"""Check that a requested device exists before anything is allocated on it."""

from __future__ import annotations

import re

from .errors import ConfigError

_DEVICE = re.compile(r"^(cpu|cuda|cuda:(\d+))$")


def check_device_available(device: str, where: str = "device") -> None:
    """Raise ``ConfigError`` if ``device`` ('cpu', 'cuda' or 'cuda:N') is not on this machine.

    ``where`` names the setting in the message (e.g. "device (from cli)" or "--device").
    """
    match = _DEVICE.match(device)
    if match is None:
        raise ConfigError(f"{where}: {device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'.")
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{where}: {device!r} was requested but no CUDA device was found (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). Use device 'cpu' "
            "or 'auto', or run on a machine with an NVIDIA GPU and a CUDA build of PyTorch."
        )
    index = match.group(2)
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise ConfigError(
            f"{where}: {device!r} was requested but this machine has {count} CUDA device(s) "
            f"(cuda:0..cuda:{count - 1})."
        )
