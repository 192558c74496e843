"""InferenceOptimizer: validate the transform config, order it by stage, run it with instruments."""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from torch.fx import GraphModule

from ..custom_ops.backend_resolver import format_backend_table, recorded_choices
from ..utils.errors import AutoDeployError, BuildError, TransformError
from ..utils.logger import log_prefix, logger
from .base import BaseTransform
from .instruments import Instrument, TransformRecord, default_instruments, format_summary
from .interface import BuildProblem, SharedConfig, TransformConfig, TransformInfo
from .registry import TransformRegistry, parse_transform_configs

if TYPE_CHECKING:
    from ..models.factory import ModelFactory
    from ..shim.interface import CachedSequenceInterface

META_KEY = "_autodeploy"


class InferenceOptimizer:
    """Runs the configured transforms: ``gm = InferenceOptimizer(factory, cfg)(cm)``.

    ``config`` maps transform names to their settings (dicts or ``TransformConfig``s). The whole
    mapping is validated before anything runs. Transforms run ordered by stage; within a stage in
    the mapping's order (a stable sort). The result's ``meta['_autodeploy']`` holds the history.
    """

    def __init__(
        self,
        factory: ModelFactory | None,
        config: Mapping[str, Any],
        *,
        strict: bool = False,
        shared_config: SharedConfig | None = None,
        instruments: Sequence[Instrument] | None = None,
        resolved_config: dict[str, Any] | None = None,
    ):
        from ..plugins import load_plugins

        load_plugins()  # AUTODEPLOY_PLUGINS may have been set after `import autodeploy`
        self.factory = factory
        parsed = parse_transform_configs(config)
        ordered = sorted(parsed.items(), key=lambda item: item[1].stage.order)
        self.transforms: list[tuple[str, BaseTransform]] = [
            (name, TransformRegistry.get(name)(cfg)) for name, cfg in ordered
        ]
        self.shared_config = shared_config or SharedConfig(strict=strict)
        if strict:
            self.shared_config.strict = True
        self.instruments = list(instruments) if instruments is not None else default_instruments()
        self.resolved_config = resolved_config or {
            "transforms": {name: t.config.model_dump(mode="json") for name, t in self.transforms}
        }

    def __call__(
        self, cm: CachedSequenceInterface | None, mod: nn.Module | None = None
    ) -> nn.Module:
        mod = mod if mod is not None else nn.Module()
        shared = self.shared_config
        history: OrderedDict[str, TransformInfo] = OrderedDict()
        records: list[TransformRecord] = []
        last_info = TransformInfo(is_clean=False, has_valid_shapes=False)
        for hook in self.instruments:
            hook.on_build_start(self.resolved_config)

        for index, (name, transform) in enumerate(self.transforms, start=1):
            cfg = transform.config
            record = TransformRecord(index=index, name=name, stage=cfg.stage)
            with log_prefix(f"[stage={cfg.stage.value}, transform={name}]"):
                for hook in self.instruments:
                    hook.before(record, mod)
                mod, last_info = self._run_one(transform, mod, cm, shared, last_info, record)
                history[name] = last_info
                records.append(record)
                _store_meta(mod, history, records, shared.problems)
                for hook in self.instruments:
                    hook.after(record, mod)

        logger.info("build summary:\n%s", format_summary(records))
        choices = recorded_choices(mod)
        if choices:
            logger.info("backends per op family:\n%s", format_backend_table(choices))
        for problem in shared.problems:
            logger.warning("problem: [%s/%s] %s", problem.stage, problem.transform, problem.message)
        _store_meta(mod, history, records, shared.problems)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        gc.collect()
        return mod

    def _run_one(
        self,
        transform: BaseTransform,
        mod: nn.Module,
        cm: CachedSequenceInterface | None,
        shared: SharedConfig,
        last_info: TransformInfo,
        record: TransformRecord,
    ) -> tuple[nn.Module, TransformInfo]:
        cfg: TransformConfig = transform.config
        if not cfg.enabled:
            record.status = "disabled"
            record.info = TransformInfo(
                skipped=True,
                is_clean=last_info.is_clean,
                has_valid_shapes=last_info.has_valid_shapes,
            )
            return mod, record.info
        try:
            new_mod, info = transform(mod, cm, self.factory, shared, last_info)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            where = f"Transform {transform.name!r} (stage {cfg.stage.value})"
            if cfg.skip_on_error and not shared.strict:
                record.status, record.error = "failed", message
                record.info = TransformInfo(skipped=True)
                shared.problems.append(
                    BuildProblem(
                        transform=transform.name,
                        stage=cfg.stage.value,
                        message=f"failed and was skipped (skip_on_error): {message}",
                    )
                )
                logger.warning("failed, skipped because skip_on_error is set: %s", message)
                # The failed rewrite may have left the graph half-done: force a cleanup next.
                return mod, TransformInfo(skipped=True)
            if cfg.skip_on_error:
                raise BuildError(
                    f"{where} failed and strict mode does not allow skip_on_error: {message}"
                ) from exc
            if isinstance(exc, AutoDeployError):
                raise
            raise TransformError(
                f"{where} failed: {message}. Set `transforms.{transform.name}.enabled: false` "
                f"to run without it, or `skip_on_error: true` to skip it when it fails."
            ) from exc
        record.status = "ran"
        record.info = info
        return new_mod, info


def _store_meta(
    mod: nn.Module,
    history: OrderedDict[str, TransformInfo],
    records: list[TransformRecord],
    problems: list[BuildProblem],
) -> None:
    """Record the history on the graph (inside a compile wrapper if compile returned one)."""
    gm = mod if isinstance(mod, GraphModule) else _inner_graph(mod)
    if gm is None:
        return
    gm.meta[META_KEY] = {
        "transform_history": OrderedDict(history),
        "records": list(records),
        "summary": [r.as_row() for r in records],
        "problems": list(problems),
        **{k: v for k, v in gm.meta.get(META_KEY, {}).items() if k not in _HISTORY_KEYS},
    }


_HISTORY_KEYS = ("transform_history", "records", "summary", "problems")


def _inner_graph(mod: nn.Module) -> GraphModule | None:
    return next((m for m in mod.modules() if isinstance(m, GraphModule)), None)


def build_summary(mod: nn.Module) -> list[dict[str, Any]]:
    """The summary rows recorded on a built module (empty if it was not built by the optimizer)."""
    gm = next((m for m in mod.modules() if isinstance(m, GraphModule) and META_KEY in m.meta), None)
    return list(gm.meta[META_KEY]["summary"]) if gm is not None else []
