"""compile_model: hand the built module to the chosen compile backend.

Backends: ``torch-simple`` (unchanged), ``torch-compile`` (``torch.compile(dynamic=True)``),
``torch-cudagraph`` (one CUDA graph per decode batch size), ``torch-opt`` (both). A backend that
cannot run here (a CUDA-graph backend on CPU, a decode step that cannot be captured) is a build
problem: reported in the build summary, an error in strict mode; the model then runs as built
(``torch-simple``).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from ....compile import CompileBackendRegistry
from ....compile.registry import CompileBackendUnavailableError
from ....custom_ops.backend_resolver import build_device
from ....utils.suggest import did_you_mean
from ...base import BaseTransform
from ...interface import SharedConfig, TransformConfig, TransformInfo
from ...registry import TransformRegistry

AUTO = "auto"


class CompileModelConfig(TransformConfig):
    """Settings of every backend; each backend reads the ones it uses (as keyword options)."""

    backend: str = Field(
        default="auto",
        description="Compile backend (registered name; the `compile_backend` shortcut sets it): "
        "torch-simple, torch-direct, torch-compile, torch-cudagraph, torch-opt. 'auto': "
        "torch-cudagraph on CUDA, torch-direct on CPU.",
    )
    cuda_graph_batch_sizes: list[int] | None = Field(
        default=None,
        description="torch-cudagraph/torch-opt: decode batch sizes to capture (the "
        "`cuda_graph_batch_sizes` setting sets it). null: 1, 2, 4, ... up to max_batch_size, "
        "always including max_batch_size. Sizes above max_batch_size are replaced by it.",
    )
    cuda_graph_warmup_runs: int = Field(
        default=3,
        ge=1,
        description="torch-cudagraph/torch-opt: uncaptured runs before each capture (lazy "
        "initialisation and compilation must not happen inside a capture).",
    )
    torch_compile_backend: str = Field(
        default="inductor",
        description="torch-compile/torch-opt: the torch.compile backend ('inductor' generates "
        "kernels; 'aot_eager' / 'eager' are for debugging).",
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value != AUTO and not CompileBackendRegistry.has(value):
            known = [AUTO, *CompileBackendRegistry.names()]
            raise ValueError(
                f"unknown compile backend {value!r}.{did_you_mean(value, known)} "
                f"Choices: {', '.join(known)}"
            )
        return value

    @field_validator("cuda_graph_batch_sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value or min(value) < 1:
            raise ValueError(
                "give at least one batch size, every size >= 1 (or null for the default)"
            )
        return sorted(set(value))

    def backend_options(self) -> dict:
        """The settings passed to the backend: every field the base TransformConfig lacks."""
        own = set(type(self).model_fields) - set(TransformConfig.model_fields) - {"backend"}
        return {name: getattr(self, name) for name in sorted(own)}


@TransformRegistry.register("compile_model")
class CompileModel(BaseTransform):
    """Compile the module with ``backend`` (``torch-simple``: unchanged, eager).

    before: the built GraphModule
    after:  what the backend returns (``torch-simple``: the same module; ``torch-compile``: an
            ``OptimizedModule``; ``torch-cudagraph`` / ``torch-opt``: a ``CudaGraphRunner`` whose
            ``cuda_graph_stats`` count replays and fallbacks)
    """

    config: CompileModelConfig

    @classmethod
    def get_config_class(cls) -> type[TransformConfig]:
        return CompileModelConfig

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        backend_cls = CompileBackendRegistry.get(_resolve_backend(self.config.backend, gm, cm))
        try:
            compiled = backend_cls(gm, cm, **self.config.backend_options()).compile()
        except CompileBackendUnavailableError as exc:
            self.report_problem(
                shared_config,
                f"{exc} The model runs uncompiled (torch-simple) instead.",
            )
            return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)
        return compiled, TransformInfo(num_matches=1, is_clean=True, has_valid_shapes=True)


def _resolve_backend(name: str, gm, cm) -> str:
    """What ``auto`` stands for: CUDA graphs on a GPU, the direct-call eager module elsewhere
    (the device is the one every backend choice uses, ``backend_resolver.build_device``; CUDA
    graphs need the sequence interface, so without one the module stays eager)."""
    if name != AUTO:
        return name
    on_cuda = cm is not None and build_device(gm, cm).type == "cuda"
    return "torch-cudagraph" if on_cuda else "torch-direct"
