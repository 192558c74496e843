"""BaseTransform: one named graph rewrite that declares what it is.

A transform class declares, as class attributes (all checked when the configuration loads):

- ``stage``: the ``Stages`` member it runs in. The YAML may restate it (``stage: cache_init``);
  a different stage is a ConfigError that names the right one. ``None`` (third-party or test
  transforms that do not declare one): the YAML must give it.
- ``requires``: facts (``autodeploy.transforms.facts``) that must hold when it runs, e.g.
  ``WEIGHTS_LOADED``, ``CACHE_INTERFACE``, ``CANONICAL_ATTENTION``.
- ``uses``: facts it builds on when the pipeline provides them: every enabled provider must run
  before it, but it also runs without them (e.g. the coverage report after the matchers).
- ``provides`` / ``invalidates``: facts it establishes / destroys. Disabled transforms provide
  nothing.
- ``optional``: the build can go on without it. Only then does a failure suggest
  ``enabled: false`` or ``skip_on_error: true``, and only then is ``skip_on_error`` allowed.
- ``failure_hint``: what to check or change when it fails (shown in the error).

Within a stage, a provider of a fact runs before the transforms that require or use it
(otherwise the YAML order holds). A new transform only declares facts; it never lists other
transforms. Example::

    @TransformRegistry.register("insert_cached_ssm_attention")
    class InsertCachedSSMAttention(BaseTransform):
        stage = Stages.CACHE_INIT
        requires = (EXPORTED_GRAPH, CACHE_INTERFACE, WEIGHTS_LOADED, CANONICAL_SSM)
        provides = (CACHE_RESOURCES,)
        optional = False
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, final

import torch.nn as nn
from torch.fx import GraphModule

from ..utils.errors import BuildError, ConfigError
from ..utils.logger import logger
from .facts import CACHE_INTERFACE, MODEL_FACTORY, Fact
from .graph_utils import canonicalize_graph, run_shape_prop
from .interface import BuildProblem, SharedConfig, Stages, TransformConfig, TransformInfo

if TYPE_CHECKING:
    from ..models.factory import ModelFactory
    from ..shim.interface import CachedSequenceInterface


class BaseTransform(ABC):
    """Subclass, implement ``_apply``, and register with ``@TransformRegistry.register(name)``.

    ``_apply`` returns the (possibly new) module and a ``TransformInfo``. Report
    ``is_clean=True`` / ``has_valid_shapes=True`` when the transform did not disturb the graph, so
    the pass manager can skip needless cleanup and shape propagation. Declare the class
    attributes below (see the module docstring).
    """

    _transform_key: ClassVar[str] = ""
    stage: ClassVar[Stages | None] = None
    requires: ClassVar[tuple[Fact, ...]] = ()
    uses: ClassVar[tuple[Fact, ...]] = ()
    provides: ClassVar[tuple[Fact, ...]] = ()
    invalidates: ClassVar[tuple[Fact, ...]] = ()
    optional: ClassVar[bool] = True
    failure_hint: ClassVar[str] = ""

    def __init__(self, config: TransformConfig):
        self.config = config

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        """The pydantic config class of this transform (override to add fields)."""
        return TransformConfig

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> BaseTransform:
        if cls.stage is not None:
            kwargs.setdefault("stage", cls.stage)
        return cls(cls.get_config_class()(**kwargs))

    @property
    def name(self) -> str:
        return self._transform_key or type(self).__name__

    @final
    def __call__(
        self,
        mod: nn.Module,
        cm: CachedSequenceInterface | None,
        factory: ModelFactory | None,
        shared_config: SharedConfig,
        last_info: TransformInfo,
    ) -> tuple[nn.Module, TransformInfo]:
        """Run pre-cleanup, the transform and post-cleanup, each only where it is needed."""
        supplied = {CACHE_INTERFACE: cm, MODEL_FACTORY: factory}
        for fact in self.requires:  # the optimizer checks this before the build; direct calls here
            if supplied.get(fact, True) is None:
                raise ConfigError(fact.missing(self.name))
        cfg = self.config
        is_graph = isinstance(mod, GraphModule)
        if is_graph:
            last_info = self._cleanup(
                mod, last_info, cfg.requires_clean_graph, cfg.requires_shape_prop, "pre"
            )
        mod, info = self._apply(mod, cm, factory, shared_config)
        # A transform vouches only for what it did; the graph stays as clean as it was before.
        info = TransformInfo(
            skipped=info.skipped,
            num_matches=info.num_matches,
            is_clean=info.is_clean and last_info.is_clean,
            has_valid_shapes=info.has_valid_shapes and last_info.has_valid_shapes,
        )
        if isinstance(mod, GraphModule):
            info = self._cleanup(mod, info, cfg.run_graph_cleanup, cfg.run_shape_prop, "post")
        return mod, info

    def _cleanup(
        self, gm: GraphModule, info: TransformInfo, clean: bool, shapes: bool, when: str
    ) -> TransformInfo:
        if shapes and not (info.is_clean and info.has_valid_shapes):
            start = time.perf_counter()
            canonicalize_graph(gm)
            run_shape_prop(gm)
            logger.debug("%s-cleanup with shape propagation: %.1f ms", when, _ms_since(start))
            return info.model_copy(update={"is_clean": True, "has_valid_shapes": True})
        if clean and not info.is_clean:
            start = time.perf_counter()
            canonicalize_graph(gm)
            logger.debug("%s-cleanup: %.1f ms", when, _ms_since(start))
            return info.model_copy(update={"is_clean": True})
        return info

    @abstractmethod
    def _apply(
        self,
        gm: nn.Module,
        cm: CachedSequenceInterface | None,
        factory: ModelFactory | None,
        shared_config: SharedConfig,
    ) -> tuple[nn.Module, TransformInfo]:
        """Rewrite ``gm`` and say what was done."""

    def report_problem(self, shared_config: SharedConfig, message: str) -> None:
        """Record something the end-of-build summary must show (an error in strict mode)."""
        problem = BuildProblem(transform=self.name, stage=self.config.stage.value, message=message)
        if shared_config.strict:
            raise BuildError(
                f"[{problem.stage}/{problem.transform}] {message} "
                "(strict mode is on; set `strict: false` to continue with a warning)"
            )
        logger.warning(message)
        shared_config.problems.append(problem)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
