"""build_model: the factory's model on meta, or a clear error without a factory."""

import pytest

from autodeploy.models import ModelFactoryRegistry
from autodeploy.transforms import InferenceOptimizer
from autodeploy.utils.errors import ConfigError


def test_builds_on_meta_with_real_buffers():
    factory = ModelFactoryRegistry.get("AutoModelForCausalLM")("builtin:tiny-llama")
    model = InferenceOptimizer(factory, {"build_model": {"stage": "factory"}}, instruments=[])(None)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.device.type for b in model.buffers()} == {"cpu"}


def test_needs_a_factory():
    with pytest.raises(ConfigError, match="needs a model factory"):
        InferenceOptimizer(None, {"build_model": {"stage": "factory"}}, instruments=[])(None)
