"""gather_logits_before_lm_head: logits only for each sequence's last token (with the paged KV
cache and decode batches: tests/transforms/test_post_load_fusion_stage.py)."""

import pytest
import torch
import torch.nn as nn
from fusion_helpers import ad, apply, aten, loaded_graph, make_cm, op_counts
from torch.export import Dim

from autodeploy.export import torch_export_to_gm
from autodeploy.transforms import InferenceOptimizer
from autodeploy.transforms.graph_utils import find_nodes, placeholders
from autodeploy.utils.errors import BuildError, ConfigError

PROMPTS = [[5, 17, 3], [9, 8, 7, 6], [11, 12]]
LAST_TOKENS = [2, 6, 8]  # flat index of each prompt's last token in the packed batch


def _forward(gm, cm):
    with torch.no_grad():
        return gm(**cm.named_args)


def test_head_sees_one_row_per_sequence():
    gm, _ = loaded_graph("llama")
    cm = make_cm()
    cm.info.nest_sequences(PROMPTS, [0, 0, 0], [[1], [2], [3]])
    before = _forward(gm, cm)  # [1, 9, vocab] (no KV cache yet: one packed row)
    gm, info = apply(gm, "gather_logits_before_lm_head", cm=cm)

    assert info.num_matches == 1 and "cu_seqlen" in cm.info.active_args
    assert [p.target for p in placeholders(gm)] == ["input_ids", "position_ids", "cu_seqlen"]
    [gather] = find_nodes(gm, ad.torch_gather_last_tokens)
    [head] = list(gather.users)
    assert head.target == aten.linear.default and head.args[1].target == "lm_head.weight"
    after = _forward(gm, cm)
    assert after.shape == (1, len(PROMPTS), before.shape[-1])
    torch.testing.assert_close(after[0], before[0, LAST_TOKENS], atol=1e-6, rtol=1e-6)


class _SoftCappedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(32, 8), nn.Linear(8, 32, bias=False)

    def forward(self, input_ids, position_ids):
        logits = self.head(self.embed(input_ids) * position_ids[..., None])
        return torch.tanh(logits / 3.0) * 3.0


def _export(model):
    inputs = {
        "input_ids": torch.randint(0, 32, (2, 4)),
        "position_ids": torch.arange(4).repeat(2, 1),
    }
    dims = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
    return torch_export_to_gm(model, inputs, {"input_ids": dims, "position_ids": dict(dims)})


def test_per_token_ops_after_the_head_stay_after_it():
    model = _SoftCappedHead()
    gm = _export(model)
    cm = make_cm()
    cm.info.nest_sequences(PROMPTS, [0, 0, 0], [[1], [2], [3]])
    before = _forward(gm, cm)
    gm, info = apply(gm, "gather_logits_before_lm_head", cm=cm)
    assert info.num_matches == 1 and op_counts(gm, tanh=aten.tanh) == {"tanh": 1}
    torch.testing.assert_close(_forward(gm, cm)[0], before[0, LAST_TOKENS])


class _NoHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(32, 8)

    def forward(self, input_ids, position_ids):
        return self.embed(input_ids).cumsum(1)


def test_a_graph_without_an_output_head_is_a_reported_problem():
    with pytest.raises(BuildError, match="found no output head"):
        apply(_export(_NoHead()), "gather_logits_before_lm_head", strict=True)


def test_needs_a_sequence_interface():
    with pytest.raises(ConfigError, match="CachedSequenceInterface"):
        InferenceOptimizer(None, {"gather_logits_before_lm_head": {"stage": "post_load_fusion"}})(
            None, _export(_SoftCappedHead())
        )
