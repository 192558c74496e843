"""match_grouped_attention: attention over repeated kv heads reads the kv heads directly."""

import torch
import torch.nn.functional as F
from matcher_helpers import ad, aten, export, run
from test_match_repeat_kv import hf_repeat_kv

from autodeploy.transforms.graph_utils import count_ops


class GroupedSdpa(torch.nn.Module):
    """HF sdpa attention with repeat_kv, 4 query heads over 2 kv heads."""

    def forward(self, q, k, v):
        k, v = hf_repeat_kv(k, 2), hf_repeat_kv(v, 2)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def test_repeat_kv_is_folded_into_the_attention_op():
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        q=torch.randn(2, 4, 5, 8, generator=g),
        k=torch.randn(2, 2, 5, 8, generator=g),
        v=torch.randn(2, 2, 5, 8, generator=g),
    )
    gm = export(GroupedSdpa(), **inputs)
    expected = gm(**inputs)
    run(gm, "match_repeat_kv")
    run(gm, "match_sdpa_to_torch_attention")
    assert count_ops(gm, ad.torch_attention_repeat_kv) == 2
    info = run(gm, "match_grouped_attention")
    assert info.num_matches == 1
    assert count_ops(gm, ad.torch_attention_repeat_kv) == 0 and count_ops(gm, aten.expand) == 0
    node = next(n for n in gm.graph.nodes if n.target == ad.torch_attention.default)
    assert node.args[1].meta["val"].shape[1] == 2  # the key has the kv heads
    torch.testing.assert_close(gm(**inputs), expected)
    assert run(gm, "match_grouped_attention").num_matches == 0
