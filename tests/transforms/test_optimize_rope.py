"""optimize_rope: one cos/sin table shared by every layer, RoPE in the Triton kernel; fallbacks
for cos/sin that are not a function of the position, and for other RoPE variants."""

import pytest
import torch
import torch.nn as nn
from fusion_helpers import (
    MAX_SEQ_LEN,
    ad,
    apply,
    aten,
    hf_logits,
    loaded_graph,
    logits,
    op_counts,
    sample_inputs,
)
from torch.export import Dim

from autodeploy.export import torch_export_to_gm
from autodeploy.transforms.graph_utils import find_nodes

LAYERS, HEAD_DIM = 2, 16


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _table_inputs(gm, rope_op):
    """The (position_ids, cos table, sin table) nodes every RoPE op reads."""
    return {(n.args[2].target, n.args[3].target, n.args[4].target) for n in find_nodes(gm, rope_op)}


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_all_layers_read_one_cos_sin_table(interpreter, backend):
    gm, hf_model = loaded_graph("llama")
    inputs = sample_inputs(seq=6)
    shifted = {**inputs, "position_ids": inputs["position_ids"] + 50}  # rows deep in the table
    before, before_shifted = logits(gm, inputs), logits(gm, shifted)
    assert op_counts(gm, rope=ad.torch_rope_with_explicit_cos_sin, cos=aten.cos) == {
        "rope": LAYERS,
        "cos": 1,
    }
    gm, info = apply(gm, "optimize_rope", backend=backend)

    rope_op = getattr(ad, f"{backend}_rope_with_cos_sin_cache")
    assert info.num_matches == LAYERS
    assert op_counts(gm, rope=rope_op, cos=aten.cos, sin=aten.sin) == {
        "rope": LAYERS,
        "cos": 0,
        "sin": 0,
    }  # the per-forward cos/sin computation is gone
    assert _table_inputs(gm, rope_op) == {("position_ids", "rope_cos_table", "rope_sin_table")}
    assert gm.rope_cos_table.shape == (MAX_SEQ_LEN, HEAD_DIM)
    assert "rope_cos_table" not in gm.state_dict()  # derived, not a checkpoint key

    after = logits(gm, inputs)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, hf_logits(hf_model, inputs), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits(gm, shifted), before_shifted, atol=1e-5, rtol=1e-5)


def test_without_the_table_cos_sin_are_still_computed_once(interpreter):
    gm, _ = loaded_graph("qwen2")
    inputs = sample_inputs(seq=5)
    before = logits(gm, inputs)
    gm, info = apply(gm, "optimize_rope", backend="triton", cos_sin_cache=False)
    assert info.num_matches == LAYERS
    ropes = find_nodes(gm, ad.triton_rope_with_explicit_cos_sin)
    assert len(ropes) == LAYERS and op_counts(gm, cos=aten.cos) == {"cos": 1}
    assert len({(n.args[2], n.args[3]) for n in ropes}) == 1  # shared by both layers
    torch.testing.assert_close(logits(gm, inputs), before, atol=1e-5, rtol=1e-5)


class _SyntheticRope(nn.Module):
    """RoPE op fed by cos/sin computed in the module: ``rotary`` of 16 channels rotate.

    ``length_scaled`` makes the frequencies depend on the sequence length (not a function of
    the position alone); ``complex`` uses the complex-frequency variant instead.
    """

    def __init__(self, rotary=8, length_scaled=False, complex_freqs=False):
        super().__init__()
        self.embed = nn.Embedding(32, 2 * 16)
        self.register_buffer("inv_freq", 1.0 / 100 ** (torch.arange(0, rotary, 2) / rotary))
        self.length_scaled, self.complex_freqs = length_scaled, complex_freqs

    def forward(self, input_ids, position_ids):
        b, s = input_ids.shape
        x = self.embed(input_ids).view(b, s, 2, 16)
        freqs = position_ids[..., None].float() * self.inv_freq  # [b, s, r/2]
        if self.length_scaled:
            freqs = freqs * (1.0 + s / 10.0)
        if self.complex_freqs:
            q, k = ad.torch_rope_with_complex_freqs(
                x, x * 2, torch.polar(torch.ones_like(freqs), freqs), 2
            )
        else:
            emb = torch.cat([freqs, freqs], -1)
            q, k = ad.torch_rope_with_explicit_cos_sin(x, x * 2, emb.cos(), emb.sin(), 2)
        return q + k


def _export_synthetic(**kwargs):
    model = _SyntheticRope(**kwargs).eval()
    inputs = {
        "input_ids": torch.randint(0, 32, (2, 5)),
        "position_ids": torch.arange(5).repeat(2, 1),
    }
    dims = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
    gm = torch_export_to_gm(model, inputs, {"input_ids": dims, "position_ids": dict(dims)})
    return model, gm, inputs


def test_partial_rotary_table_is_rotary_wide(interpreter):
    model, gm, inputs = _export_synthetic(rotary=8)
    gm, info = apply(gm, "optimize_rope", backend="triton")
    assert info.num_matches == 1 and gm.rope_cos_table.shape == (MAX_SEQ_LEN, 8)
    torch.testing.assert_close(gm(**inputs), model(**inputs), atol=1e-5, rtol=1e-5)


def test_cos_sin_that_depend_on_the_batch_shape_keep_the_explicit_op(interpreter):
    model, gm, inputs = _export_synthetic(length_scaled=True)
    gm, info = apply(gm, "optimize_rope", backend="triton")
    assert info.num_matches == 1 and not hasattr(gm, "rope_cos_table")
    assert op_counts(gm, explicit=ad.triton_rope_with_explicit_cos_sin) == {"explicit": 1}
    torch.testing.assert_close(gm(**inputs), model(**inputs), atol=1e-5, rtol=1e-5)


def test_other_rope_variants_are_not_matched(interpreter):
    model, gm, inputs = _export_synthetic(complex_freqs=True)
    gm, info = apply(gm, "optimize_rope", backend="triton")
    assert info.skipped and info.num_matches == 0
    assert op_counts(gm, complex=ad.torch_rope_with_complex_freqs) == {"complex": 1}


def test_auto_leaves_a_cpu_graph_alone(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gm, _ = loaded_graph("llama")
    gm, info = apply(gm, "optimize_rope", strict=True)
    assert info.skipped and op_counts(gm, rope=ad.torch_rope_with_explicit_cos_sin) == {
        "rope": LAYERS
    }
