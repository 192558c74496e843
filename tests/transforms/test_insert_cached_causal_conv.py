"""insert_cached_causal_conv on its own: structure, the conv state, numbers of a prefill step.

(Chunked prefill and decode through both state families together are in
test_insert_cached_ssm_attention.py.)"""

from __future__ import annotations

import torch
from cached_model_helpers import make_cm
from tiny_mamba import CONV_DIM, KERNEL, VOCAB, export_tiny_mamba

from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import count_ops, placeholders

ad = torch.ops.auto_deploy


def test_only_the_convs_get_a_state_and_a_prefill_matches_the_graph_before():
    _, gm = export_tiny_mamba()
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = gm(input_ids=ids, position_ids=torch.arange(9)[None])
    cm = make_cm(max_batch_size=2)
    config = {
        "move_inputs_to_device": {"stage": "weight_load"},
        "insert_cached_causal_conv": {"stage": "cache_init", "backend": "torch"},
        "initialize_cache": {"stage": "cache_init"},
    }
    cached = InferenceOptimizer(None, config)(cm, gm)
    assert count_ops(cached, ad.torch_causal_conv1d) == 0
    assert count_ops(cached, ad.torch_cached_causal_conv1d) == 2
    assert count_ops(cached, ad.torch_ssm) == 2  # the other family is left alone
    names = [p.target for p in placeholders(cached)]
    assert names[-2:] == ["conv_state_0", "conv_state_1"]
    assert cm.caches["conv_state_0"].shape == (3, CONV_DIM, KERNEL - 1)

    cm.info.nest_sequences([ids[0].tolist()], [0], [[1, 2, 3]], slot_idx=[1])
    with torch.inference_mode():
        after = cached(**cm.named_args)
    torch.testing.assert_close(after.reshape(before.shape), before, atol=1e-5, rtol=1e-5)
    assert cm.caches["conv_state_0"][1].abs().sum() > 0  # slot 1 holds the last inputs
    assert cm.caches["conv_state_0"][0].abs().sum() == 0  # other slots untouched
