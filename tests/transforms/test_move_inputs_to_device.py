"""move_inputs_to_device: batch buffers and the graph inputs' example values on the device."""

import pytest
from cached_model_helpers import export_tiny, make_cm

from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import placeholders, run_shape_prop
from autodeploy.utils.errors import ConfigError


def test_graph_input_values_move_from_meta_and_shapes_propagate():
    _, gm = export_tiny()
    assert {p.meta["val"].device.type for p in placeholders(gm)} == {"meta"}
    cm = make_cm()
    gm = InferenceOptimizer(None, {"move_inputs_to_device": {"stage": "weight_load"}})(cm, gm)
    vals = [p.meta["val"] for p in placeholders(gm)]
    assert {v.device.type for v in vals} == {"cpu"}
    assert all(not isinstance(d, int) for v in vals for d in v.shape)  # still symbolic
    run_shape_prop(gm)  # weights (cpu) and inputs now agree
    assert gm.meta["_autodeploy"]["transform_history"]["move_inputs_to_device"].num_matches == 2


@pytest.mark.gpu
def test_cuda_inputs_move_and_host_inputs_stay_on_the_cpu():
    model, gm = export_tiny()
    cm = make_cm(device="cuda")
    config = {
        "move_inputs_to_device": {"stage": "weight_load"},
        "insert_cached_attention": {"stage": "cache_init"},
    }
    gm = InferenceOptimizer(None, config)(cm, gm.cuda())
    vals = {p.target: p.meta["val"] for p in placeholders(gm)}
    assert vals["input_ids"].is_cuda and vals["cache_loc"].is_cuda
    assert not vals["batch_info_host"].is_cuda
    assert cm.info.named_args["input_ids"].is_cuda


def test_explicit_device_without_an_interface():
    _, gm = export_tiny()
    config = {"move_inputs_to_device": {"stage": "weight_load", "device": "cpu"}}
    gm = InferenceOptimizer(None, config)(None, gm)
    assert {p.meta["val"].device.type for p in placeholders(gm)} == {"cpu"}
    with pytest.raises(ConfigError, match="CachedSequenceInterface"):
        InferenceOptimizer(None, {"move_inputs_to_device": {"stage": "weight_load"}})(None, gm)
