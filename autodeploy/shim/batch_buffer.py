"""``BatchBuffer``: one host buffer and its device twin, cut into the regions of a step.

Every region (``regions.py``) is a typed view into one byte buffer on the host (pinned when the
device is CUDA) and the same view into one buffer on the device, so a step is written through
numpy views of the host buffer and moved with a single non-blocking copy of its used prefix.
On CPU the two buffers are one (nothing to copy).
"""

from __future__ import annotations

import numpy as np
import torch

from .regions import Capacity, Region

_ALIGN = 64  # bytes; every region starts on a cache-line boundary


class BatchBuffer:
    """The host and device buffers of a ``SequenceInfo`` and the regions' views into them."""

    def __init__(self, regions: list[Region], capacity: Capacity, device: torch.device):
        self.regions = {r.name: r for r in regions}
        self.device = device
        offsets: dict[str, tuple[int, torch.dtype, int]] = {}
        nbytes = 0
        for region in regions:
            numel = region.capacity(capacity)
            offsets[region.name] = (nbytes, region.dtype, numel)
            nbytes += (numel * region.dtype.itemsize + _ALIGN - 1) // _ALIGN * _ALIGN
        self.offsets = offsets
        self.nbytes = nbytes
        pin = device.type == "cuda"
        self.host_buf = torch.zeros(nbytes, dtype=torch.uint8, pin_memory=pin)
        if device.type == "cpu":
            self.device_buf = self.host_buf
        else:
            self.device_buf = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        self.host = self._views(self.host_buf)
        device_views = self._views(self.device_buf)
        for region in regions:  # host-only regions: the device view is the host mirror
            if region.host_only:
                device_views[region.name] = self.host[region.name]
        self.dev = device_views
        # The step is written through numpy views of the host regions (no torch op per field).
        self.host_np: dict[str, np.ndarray] = {n: v.numpy() for n, v in self.host.items()}
        self._copy_done: torch.cuda.Event | None = None

    def _views(self, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            name: buf[offset : offset + numel * dtype.itemsize].view(dtype)
            for name, (offset, dtype, numel) in self.offsets.items()
        }

    def end_of(self, name: str, numel: int) -> int:
        """The byte offset just past the first ``numel`` elements of region ``name``."""
        offset, dtype, _ = self.offsets[name]
        return offset + numel * dtype.itemsize

    def wait_for_copy(self) -> None:
        """Block until the last copy has read the host buffer (before it is overwritten)."""
        if self._copy_done is not None:
            self._copy_done.synchronize()

    def copy_to_device(self, host_prefix: torch.Tensor, device_prefix: torch.Tensor) -> None:
        """The step's one host-to-device copy (of the used prefix of the buffer)."""
        if self.device_buf is self.host_buf:
            return
        device_prefix.copy_(host_prefix, non_blocking=True)
        if self.device.type == "cuda":
            if self._copy_done is None:
                self._copy_done = torch.cuda.Event()
            self._copy_done.record()
