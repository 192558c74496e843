"""torch-compile: torch.compile(dynamic=True) of the built graph equals the graph run eagerly.

On CPU the test uses the "aot_eager" torch.compile backend (dynamo tracing with dynamic shapes
and our ops' fake implementations, without Inductor's C++ code generation, which takes ~30 s on
a 2-core machine); the GPU test runs Inductor.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from transforms.cached_model_helpers import VOCAB, export_tiny

from autodeploy.compile.backends.torch_compile import compile_dynamic
from autodeploy.transforms import InferenceOptimizer
from autodeploy.utils.errors import ConfigError

SHAPES = [(2, 4), (3, 7), (1, 5), (4, 1)]  # batch x tokens: prefill-like, decode-like, batch 1


@pytest.fixture(scope="module")
def exported():
    return export_tiny()


def compile_with(gm, **options):
    config = {"compile_model": {"stage": "compile", "backend": "torch-compile", **options}}
    return InferenceOptimizer(None, config)(None, gm)


def check_matches_eager(model, compiled, device, atol=0.0):
    generator = torch.Generator().manual_seed(0)
    for batch, tokens in SHAPES:
        ids = torch.randint(0, VOCAB, (batch, tokens), generator=generator).to(device)
        positions = torch.arange(tokens, device=device).repeat(batch, 1)
        with torch.inference_mode():
            expected = model(ids, positions)
            got = compiled(input_ids=ids, position_ids=positions)
        torch.testing.assert_close(got, expected, atol=atol, rtol=atol)


def test_compiled_graph_matches_eager_for_every_shape(exported):
    torch._dynamo.reset()
    counters.clear()
    model, gm = exported
    compiled = compile_with(copy.deepcopy(gm), torch_compile_backend="aot_eager")
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    check_matches_eager(model, compiled, "cpu")
    # dynamic shapes: (2, 4) and (3, 7) share a graph; a dimension of 1 is specialised
    assert counters["stats"]["unique_graphs"] <= 3


def test_unknown_torch_compile_backend_suggests_a_name(exported):
    with pytest.raises(ConfigError, match="'inductor'"):
        compile_with(copy.deepcopy(exported[1]), torch_compile_backend="inductr")


def test_recompile_limit_is_only_raised(monkeypatch):
    config = torch._dynamo.config
    monkeypatch.setattr(config, "recompile_limit", 8)
    compile_dynamic(torch.nn.Linear(2, 2), "eager", min_recompile_limit=20)
    assert config.recompile_limit == 20
    compile_dynamic(torch.nn.Linear(2, 2), "eager", min_recompile_limit=4)
    assert config.recompile_limit == 20


@pytest.mark.gpu
def test_inductor_on_gpu_matches_eager(exported):
    torch._dynamo.reset()
    model, gm = exported
    model = copy.deepcopy(model).cuda()
    compiled = compile_with(copy.deepcopy(gm).cuda())
    check_matches_eager(model, compiled, "cuda", atol=1e-4)
