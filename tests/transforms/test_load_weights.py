"""load_weights: checkpoint (or random) weights on the run device; graph device args fixed."""

import torch
from tiny_models import save_tiny

from autodeploy.models import ModelFactoryRegistry
from autodeploy.transforms import InferenceOptimizer

BUILD = {
    "build_model": {"stage": "factory"},
    "export_to_gm": {"stage": "export"},
    "load_weights": {"stage": "weight_load"},
}


def _devices_in_graph(gm):
    found = set()
    for node in gm.graph.nodes:
        for value in (*node.args, *node.kwargs.values()):
            if isinstance(value, torch.device):
                found.add(value.type)
    return found


def test_loads_the_checkpoint_and_matches_hf(tmp_path):
    hf_model = save_tiny(tmp_path, "llama", seed=3)
    factory = ModelFactoryRegistry.get("AutoModelForCausalLM")(str(tmp_path))
    gm = InferenceOptimizer(factory, BUILD)(None)
    assert all(p.device.type == "cpu" for p in gm.parameters())
    assert "meta" not in _devices_in_graph(gm)
    torch.testing.assert_close(
        gm.get_parameter("model.layers.0.self_attn.q_proj.weight"),
        hf_model.model.layers[0].self_attn.q_proj.weight,
    )
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected = hf_model(ids).logits
    got = gm(input_ids=ids, position_ids=torch.arange(5)[None])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_random_init_without_a_checkpoint():
    factory = ModelFactoryRegistry.get("AutoModelForCausalLM")(
        "builtin:tiny-llama", skip_loading_weights=True
    )
    config = {**BUILD, "load_weights": {"stage": "weight_load", "device": "cpu"}}
    gm = InferenceOptimizer(factory, config)(None)
    weight = gm.get_parameter("model.layers.0.self_attn.q_proj.weight")
    assert weight.device.type == "cpu" and weight.std() > 0
