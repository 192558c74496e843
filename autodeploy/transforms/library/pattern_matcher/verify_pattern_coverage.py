"""verify_pattern_coverage: report what the matchers found; fail if attention was missed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ....utils.errors import TransformError
from ....utils.logger import logger
from ...base import BaseTransform
from ...facts import (
    ATTENTION_LAYOUT,
    CANONICAL_ATTENTION,
    CANONICAL_CAUSAL_CONV,
    CANONICAL_L2NORM,
    CANONICAL_MOE,
    CANONICAL_RMSNORM,
    CANONICAL_ROPE,
    CANONICAL_SSM,
    CANONICAL_SWIGLU,
    EXPORTED_GRAPH,
    REPEAT_KV_OP,
    ROPE_LAYOUT,
)
from ...interface import Stages, TransformConfig, TransformInfo
from ...optimizer import META_KEY
from ...registry import TransformRegistry
from ._coverage import collect_coverage, format_coverage

COVERAGE_META_KEY = "autodeploy_coverage"


class CoverageConfig(TransformConfig):
    on_mismatch: Literal["error", "warn"] = Field(
        default="error",
        description="What an attention layer without torch_attention (or an attention feature "
        "that differs from the model config) is: an error, or a warning in the build summary.",
    )


@TransformRegistry.register("verify_pattern_coverage")
class VerifyPatternCoverage(BaseTransform):
    """Summarize the canonical ops per layer against the model config; the graph is unchanged.

    before: a graph after the pattern matchers
    after:  the same graph; ``gm.meta["autodeploy_coverage"] = {"summary": {...}, "text": ...}``
            (the text also as ``gm.meta["_autodeploy"]["coverage"]``, read by dump_graph)
    Attention must be found in every attention layer the config declares (with the config's
    sliding window, soft-cap and kv heads), and one MoE op in every sparse layer of an MoE
    model (dense layers must show their MLP); missing RoPE or unmatched RMSNorm modules are
    reported as build problems (errors in strict mode).
    """

    stage = Stages.PATTERN_MATCHER
    requires = (EXPORTED_GRAPH,)
    uses = (
        CANONICAL_ATTENTION,
        REPEAT_KV_OP,
        ATTENTION_LAYOUT,
        CANONICAL_ROPE,
        ROPE_LAYOUT,
        CANONICAL_RMSNORM,
        CANONICAL_L2NORM,
        CANONICAL_SWIGLU,
        CANONICAL_MOE,
        CANONICAL_SSM,
        CANONICAL_CAUSAL_CONV,
    )

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return CoverageConfig

    def _apply(self, gm, cm, factory, shared_config):
        config = getattr(factory, "model_config", None) if factory is not None else None
        coverage = collect_coverage(gm, config)
        text = format_coverage(coverage)
        gm.meta[COVERAGE_META_KEY] = {"summary": coverage.as_dict(), "text": text}
        # Where the build summary (and dump_graph's summary.txt) looks for it.
        gm.meta.setdefault(META_KEY, {})["coverage"] = text
        logger.info("%s", text)

        if not coverage.attention_ok:
            message = _attention_message(coverage)
            if self.config.on_mismatch == "error":
                raise TransformError(message)
            self.report_problem(shared_config, message)
        if not coverage.moe.ok:
            message = (
                f"MoE op (torch_moe) missing in sparse layer(s) {coverage.moe.missing_layers} "
                "(the config declares experts there); see the hf_moe_experts export patch. Set "
                "`transforms.verify_pattern_coverage.on_mismatch: warn` to continue anyway."
            )
            if self.config.on_mismatch == "error":
                raise TransformError(message)
            self.report_problem(shared_config, message)
        if not coverage.ssm.ok:
            message = (
                f"Mamba mixers not exported as canonical ops: {coverage.ssm.format().strip()}; "
                "see the mamba2_mixer export patch (autodeploy/export/library/mamba2_mixer.py)."
            )
            if self.config.on_mismatch == "error":
                raise TransformError(message)
            self.report_problem(shared_config, message)
        if coverage.moe.dense_layers_without_mlp:
            self.report_problem(
                shared_config,
                f"dense layers {coverage.moe.dense_layers_without_mlp} of an MoE model have no "
                "MLP module in the graph.",
            )
        if coverage.missing_rope_layers:
            self.report_problem(
                shared_config,
                f"RoPE not matched in layers {coverage.missing_rope_layers} (the rotation still "
                "runs as aten ops); see match_rope_pattern.",
            )
        if coverage.unmatched_norm_modules:
            self.report_problem(
                shared_config,
                f"RMSNorm modules without a torch_rmsnorm op: "
                f"{', '.join(coverage.unmatched_norm_modules)}; see match_rmsnorm_pattern.",
            )
        return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)


def _attention_message(cov) -> str:
    total = len(cov.expected_attention_layers)
    parts = []
    if cov.missing_attention_layers:
        layers = ", ".join(f"{i} ({cov.modules.get(i, '?')})" for i in cov.missing_attention_layers)
        hints = sorted({h.split(" ")[0] for h in cov.attention_hints.values()})
        look_at = (
            ", ".join(hints)
            if hints
            else ("match_eager_attention / match_sdpa_to_torch_attention, or the export patches")
        )
        parts.append(
            f"attention matched in {total - len(cov.missing_attention_layers)} of {total} "
            f"layers; no torch_attention op in layer(s) {layers}. Look at {look_at}."
        )
    parts.extend(cov.feature_mismatches)
    return (
        " ".join(parts)
        + " Set `transforms.verify_pattern_coverage.on_mismatch: warn` to continue anyway."
    )
