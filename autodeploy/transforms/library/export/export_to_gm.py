"""export_to_gm: torch.export the model into a keyword-callable GraphModule."""

from __future__ import annotations

from pydantic import Field

from ....export import torch_export_to_gm
from ...base import BaseTransform
from ...facts import CANONICAL_ATTENTION, EXPORTED_GRAPH, MODEL_BUILT, MODEL_FACTORY
from ...interface import SharedConfig, Stages, TransformConfig, TransformInfo
from ...registry import TransformRegistry


class ExportToGMConfig(TransformConfig):
    strict: bool = Field(default=False, description="Use strict (dynamo) torch.export tracing.")
    patches: list[str] | None = Field(
        default=None,
        description="Export patches to apply (names); null applies every registered patch.",
    )


@TransformRegistry.register("export_to_gm")
class ExportToGM(BaseTransform):
    """Export the model with dynamic batch and sequence dims.

    before: ``model(input_ids, position_ids, attention_mask=..., use_cache=..., ...)`` (nn.Module)
    after:  ``gm(input_ids [b, s], position_ids [b, s]) -> logits [b, s, vocab]`` (GraphModule,
            same parameter names, tied weights and load hooks as the model)
    """

    stage = Stages.EXPORT
    requires = (MODEL_FACTORY, MODEL_BUILT)  # the factory gives the example inputs
    provides = (EXPORTED_GRAPH, CANONICAL_ATTENTION)
    optional = False
    failure_hint = (
        "torch.export could not capture the model: export with `model_kwargs: "
        "{attn_implementation: sdpa}` if the attention code is the cause, and read the graph "
        "dump (AUTODEPLOY_DUMP_GRAPHS_DIR)."
    )

    config: ExportToGMConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return ExportToGMConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        exported = torch_export_to_gm(
            gm,
            factory.get_example_inputs(),
            factory.get_dynamic_shapes(),
            strict=self.config.strict,
            patches=self.config.patches,
            model_name=factory.describe(),
        )
        return exported, TransformInfo(num_matches=1, is_clean=True, has_valid_shapes=True)
