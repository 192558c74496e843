"""Test plugin: a transform that raises on rank 1 only (a rank that fails to build)."""

from autodeploy.transforms.base import BaseTransform
from autodeploy.transforms.interface import TransformInfo
from autodeploy.transforms.registry import TransformRegistry


@TransformRegistry.register("fail_on_rank_one")
class FailOnRankOne(BaseTransform):
    def _apply(self, gm, cm, factory, shared_config):
        if shared_config.local_rank == 1:
            raise RuntimeError("boom on rank one")
        return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)
