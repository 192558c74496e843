"""move_inputs_to_device: put the batch buffers, caches and graph-input metadata on the device."""

from __future__ import annotations

import torch
from pydantic import Field
from torch.fx import GraphModule

from ....utils.errors import ConfigError
from ...base import BaseTransform
from ...facts import EXPORTED_GRAPH, INPUTS_ON_DEVICE
from ...graph_utils import fake_mode_of, named_graphmodules, placeholders
from ...interface import SharedConfig, Stages, TransformConfig, TransformInfo
from ...registry import TransformRegistry


class MoveInputsToDeviceConfig(TransformConfig):
    device: str | None = Field(
        default=None, description="Target device; null uses the CachedSequenceInterface's device."
    )


@TransformRegistry.register("move_inputs_to_device")
class MoveInputsToDevice(BaseTransform):
    """Move ``cm`` (SequenceInfo buffers, caches) to the run device, and re-home the example
    values of the graph inputs there (export recorded them on meta), so shape propagation sees
    inputs and weights on one device.

    before: ``input_ids``/``position_ids`` example values on meta
    after:  the same symbolic shapes on the run device (``*_host`` inputs stay on the CPU)
    """

    stage = Stages.WEIGHT_LOAD
    requires = (EXPORTED_GRAPH,)
    provides = (INPUTS_ON_DEVICE,)
    optional = False
    failure_hint = "Check `device` (and that the device is visible to this process)."

    config: MoveInputsToDeviceConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return MoveInputsToDeviceConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        if cm is None and self.config.device is None:
            raise ConfigError("move_inputs_to_device needs a CachedSequenceInterface or `device`.")
        device = torch.device(self.config.device or cm.device)
        if cm is not None:
            cm.to(device)
        moved = sum(_move_input_values(sub, device) for _, sub in named_graphmodules(gm))
        return gm, TransformInfo(num_matches=moved, is_clean=True, has_valid_shapes=True)


def _move_input_values(gm: GraphModule, device: torch.device) -> int:
    moved = 0
    mode = fake_mode_of(gm)
    for node in placeholders(gm):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or str(node.target).endswith("_host"):
            continue
        if val.device != device:
            with mode:
                node.meta["val"] = val.to(device)
            moved += 1
    return moved
