"""insert_cached_causal_conv: ``torch_causal_conv1d`` becomes a backend's cached conv op."""

from __future__ import annotations

from typing import ClassVar

from ....custom_ops.mamba.descriptor import CAUSAL_CONV
from ...base import BaseTransform
from ...facts import (
    CACHE_INTERFACE,
    CACHE_RESOURCES,
    CANONICAL_CAUSAL_CONV,
    EXPORTED_GRAPH,
    INPUTS_ON_DEVICE,
    WEIGHTS_LOADED,
)
from ...interface import SharedConfig, Stages, TransformConfig
from ...registry import TransformRegistry
from .insert_cached_ssm_attention import StateFamilyConfig, insert_state_family


class InsertCachedCausalConvConfig(StateFamilyConfig):
    FAMILY: ClassVar[str] = CAUSAL_CONV.name


@TransformRegistry.register("insert_cached_causal_conv")
class InsertCachedCausalConv(BaseTransform):
    """Replace every ``torch_causal_conv1d`` by the backend's cached conv op; one conv state per
    layer.

    before: ``y = torch_causal_conv1d(x, weight, bias, activation)``
    after:  ``y = torch_cached_causal_conv1d(x, weight, bias, batch_info_host, cu_seqlen,
            input_pos, slot_idx, conv_state_<i>, activation)`` with ``conv_state_<i>``:
            [slots, channels, kernel_size - 1].
    """

    stage = Stages.CACHE_INIT
    requires = (EXPORTED_GRAPH, CACHE_INTERFACE, WEIGHTS_LOADED)
    uses = (CANONICAL_CAUSAL_CONV, INPUTS_ON_DEVICE)
    provides = (CACHE_RESOURCES,)

    config: InsertCachedCausalConvConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return InsertCachedCausalConvConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        return insert_state_family(gm, cm, CAUSAL_CONV.name, self.config.backend, self.name)
