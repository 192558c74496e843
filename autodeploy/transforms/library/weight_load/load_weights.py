"""load_weights: give the graph its real weights on the run device."""

from __future__ import annotations

import torch
from pydantic import Field

from ....export import set_graph_device
from ....utils.logger import logger
from ...base import BaseTransform
from ...facts import EXPORTED_GRAPH, MODEL_BUILT, MODEL_FACTORY, WEIGHTS_LOADED, WEIGHTS_SHARDED
from ...graph_utils import named_graphmodules
from ...interface import SharedConfig, Stages, TransformConfig, TransformInfo
from ...registry import TransformRegistry


class LoadWeightsConfig(TransformConfig):
    device: str | None = Field(
        default=None,
        description="Device to load onto; null uses the CachedSequenceInterface's device "
        "(cpu when there is none).",
    )


@TransformRegistry.register("load_weights")
class LoadWeights(BaseTransform):
    """Load the checkpoint (or random-init) through ``load_state_dict`` and fix graph devices.

    before: parameters on meta; ops that create tensors carry ``device=meta``
    after:  parameters real on the run device (sharding load hooks fired); every recorded
            ``device=`` argument names the run device
    """

    stage = Stages.WEIGHT_LOAD
    requires = (MODEL_FACTORY, MODEL_BUILT)
    uses = (EXPORTED_GRAPH, WEIGHTS_SHARDED)
    provides = (WEIGHTS_LOADED,)
    optional = False
    failure_hint = (
        "Check the checkpoint in the model directory (a truncated or corrupt *.safetensors "
        "file, or an index naming a missing shard: download it again), or set "
        "`skip_loading_weights: true` to build with random weights."
    )

    config: LoadWeightsConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return LoadWeightsConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        device = torch.device(self.config.device or (cm.device if cm is not None else "cpu"))
        factory.load_or_random_init(gm, device)
        changed = sum(set_graph_device(sub, device) for _, sub in named_graphmodules(gm))
        logger.info("weights on %s; %d device arguments rewritten", device, changed)
        return gm, TransformInfo(num_matches=1, is_clean=True, has_valid_shapes=changed == 0)
