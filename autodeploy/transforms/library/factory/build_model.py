"""build_model: ask the factory for the model, parameters on the meta device."""

from __future__ import annotations

import torch.nn as nn

from ...base import BaseTransform
from ...facts import MODEL_BUILT, MODEL_FACTORY
from ...interface import SharedConfig, Stages, TransformInfo
from ...registry import TransformRegistry


@TransformRegistry.register("build_model")
class BuildModel(BaseTransform):
    """Build the source model from the factory (no weights yet).

    before: an empty ``nn.Module``
    after:  the model (e.g. ``LlamaForCausalLM``), parameters on meta, buffers real
    """

    stage = Stages.FACTORY
    requires = (MODEL_FACTORY,)
    provides = (MODEL_BUILT,)
    optional = False
    failure_hint = (
        "Check `model` (a Hugging Face directory, hub id or builtin:<name>) and that its "
        "config.json loads with transformers; `model_factory` picks how it is built."
    )

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        model: nn.Module = factory.build_model(device="meta")
        return model, TransformInfo(num_matches=1, is_clean=True, has_valid_shapes=True)
