"""compile_model and the compile backend registry."""

import pytest
import torch.nn as nn
from cached_model_helpers import export_tiny

from autodeploy.compile import CompileBackendRegistry, CompilerBackend
from autodeploy.compile.registry import CompileBackendUnavailableError
from autodeploy.transforms import InferenceOptimizer
from autodeploy.utils.errors import BuildError, ConfigError, RegistryError


def test_torch_simple_returns_the_graph_unchanged():
    _, gm = export_tiny()
    out = InferenceOptimizer(None, {"compile_model": {"stage": "compile"}})(None, gm)
    assert out is gm
    record = gm.meta["_autodeploy"]["transform_history"]["compile_model"]
    assert record.num_matches == 1 and not record.skipped


def test_unknown_backend_suggests_a_name():
    with pytest.raises(ConfigError, match="'torch-simple'"):
        InferenceOptimizer(None, {"compile_model": {"stage": "compile", "backend": "torch-simpel"}})
    with pytest.raises(RegistryError, match="torch-simple"):
        CompileBackendRegistry.get("torch_simple")


class _Wrapped(nn.Module):
    def __init__(self, inner, cm):
        super().__init__()
        self.inner, self.cm = inner, cm

    def forward(self, **kwargs):
        return self.inner(**kwargs)


@CompileBackendRegistry.register("_test-wrap")
class _WrapBackend(CompilerBackend):
    def compile(self):
        return _Wrapped(self.model, self.cm)


def test_a_registered_backend_is_used_and_sees_the_interface():
    _, gm = export_tiny()
    sentinel = object()
    config = {"compile_model": {"stage": "compile", "backend": "_test-wrap"}}
    out = InferenceOptimizer(None, config)(sentinel, gm)
    assert isinstance(out, _Wrapped) and out.inner is gm and out.cm is sentinel
    with pytest.raises(RegistryError, match="already registered"):
        CompileBackendRegistry.register("torch-simple")(_WrapBackend)


# ---------------------------------------------------------------- settings and fallbacks


def test_backend_settings_are_validated_and_passed_as_options():
    from autodeploy.transforms.library.compile.compile_model import CompileModelConfig

    config = CompileModelConfig(stage="compile", cuda_graph_batch_sizes=[8, 1, 4, 4])
    assert config.cuda_graph_batch_sizes == [1, 4, 8]
    assert config.backend_options() == {
        "cuda_graph_batch_sizes": [1, 4, 8],
        "cuda_graph_warmup_runs": 3,
        "torch_compile_backend": "inductor",
    }
    for bad in (
        {"cuda_graph_batch_sizes": [0, 2]},
        {"cuda_graph_batch_sizes": []},
        {"cuda_graph_warmup_runs": 0},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            InferenceOptimizer(None, {"compile_model": {"stage": "compile", **bad}})


def test_cuda_graph_batch_sizes_setting_is_a_shortcut():
    from autodeploy.config import LlmArgs

    args = LlmArgs(cuda_graph_batch_sizes=[4, 1])
    assert args.transforms["compile_model"]["cuda_graph_batch_sizes"] == [1, 4]
    transforms = {"compile_model": {"stage": "compile", "cuda_graph_batch_sizes": [2, 8]}}
    assert LlmArgs(transforms=transforms).cuda_graph_batch_sizes == [2, 8]


@CompileBackendRegistry.register("_test-unavailable")
class _UnavailableBackend(CompilerBackend):
    def compile(self):
        raise CompileBackendUnavailableError("_test-unavailable cannot run here; use X.")


def test_an_unavailable_backend_is_a_reported_problem():
    _, gm = export_tiny()
    config = {"compile_model": {"stage": "compile", "backend": "_test-unavailable"}}
    assert InferenceOptimizer(None, config)(None, gm) is gm
    (problem,) = gm.meta["_autodeploy"]["problems"]
    assert "cannot run here; use X. The model runs uncompiled (torch-simple)" in problem.message
    assert gm.meta["_autodeploy"]["transform_history"]["compile_model"].skipped
    with pytest.raises(BuildError, match="cannot run here.*strict mode is on"):
        InferenceOptimizer(None, config, strict=True)(None, gm)


def test_misspelled_auto_backends_are_suggested():
    from autodeploy.config import LlmArgs
    from autodeploy.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"compile backend 'atuo'\. Did you mean 'auto'\?"):
        LlmArgs(compile_backend="atuo")
    with pytest.raises(ConfigError, match=r"attention backend 'atuo'\. Did you mean 'auto'\?"):
        LlmArgs(attn_backend="atuo")
