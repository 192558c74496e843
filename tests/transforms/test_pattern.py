"""The pattern utility: scalars, shape wildcards, exact literals, noise, commutativity, checks."""

from __future__ import annotations

import pytest
import torch
from matcher_helpers import ad, aten, export
from torch.fx import GraphModule

from autodeploy.transforms.graph_utils import count_ops, find_nodes
from autodeploy.transforms.pattern import PatternSet, bound_args


def scaled_tanh(x, scale):
    return torch.tanh(x * scale)


def replacement(x, scale):
    return aten.tanh.default(aten.mul.Tensor(aten.mul.Tensor(x, 0.5), 2.0 * scale))


def examples():
    return [(torch.randn(2, 3), 0.5), (torch.randn(4, 5, 6), 0.5)]


class TwoScales(torch.nn.Module):
    def forward(self, x):
        return torch.tanh(x * 0.3) + torch.tanh(2.0 * x.to(torch.float32))  # operands swapped


def apply(module, patterns, **inputs) -> GraphModule:
    gm = export(module, **inputs)
    expected = gm(**inputs)
    patterns.apply(gm)
    gm.recompile()
    torch.testing.assert_close(gm(**inputs), expected)
    return gm


def test_scalars_are_captured_per_site_and_operands_match_in_either_order():
    patterns = PatternSet()
    patterns.add(scaled_tanh, replacement, examples())
    gm = apply(TwoScales(), patterns, x=torch.randn(3, 4))
    muls = [bound_args(n)["other"] for n in find_nodes(gm, aten.mul.Tensor)]
    assert sorted(m for m in muls if m != 0.5) == pytest.approx([0.6, 4.0])  # 2 * captured scale


class MeanOverRows(torch.nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + 1e-6)  # dim 0, not -1


def rms(x, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def test_literals_equal_in_all_traces_must_match_exactly():
    patterns = PatternSet()
    patterns.add(rms, lambda x, eps: ad.torch_l2norm.default(x, eps), examples())
    gm = export(MeanOverRows(), x=torch.randn(3, 4))
    assert patterns.apply(gm) == 0


class HalfSplit(torch.nn.Module):
    def forward(self, x):  # 40 channels: a head size no example used
        return torch.cat((-x[..., 20:], x[..., :20]), dim=-1)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def test_shape_derived_literals_match_any_value():
    patterns = PatternSet()
    patterns.add(rotate_half, lambda x: aten.neg.default(x), examples_without_scale())
    gm = export(HalfSplit(), x=torch.randn(2, 40))
    assert patterns.apply(gm) == 1
    assert count_ops(gm, aten.cat) == 0


def examples_without_scale():
    return [(torch.randn(2, 8),), (torch.randn(3, 12),)]


def test_check_can_reject_and_bad_replacements_are_undone():
    patterns = PatternSet()
    patterns.add(scaled_tanh, replacement, examples(), check=lambda match: None)
    gm = export(TwoScales(), x=torch.randn(3, 4))
    assert patterns.apply(gm) == 0

    wrong_shape = PatternSet()  # a replacement that changes the shape is not applied
    wrong_shape.add(scaled_tanh, lambda x, scale: aten.sum.default(x), examples())
    gm = export(TwoScales(), x=torch.randn(3, 4))
    assert wrong_shape.apply(gm) == 0
    assert count_ops(gm, aten.tanh) == 2


def test_noise_between_pattern_ops_is_skipped():
    class Noisy(torch.nn.Module):
        def forward(self, x):
            y = torch.nn.functional.dropout(x.to(torch.float32) * 0.3, p=0.1, training=False)
            return torch.tanh(y.contiguous())

    patterns = PatternSet()
    patterns.add(scaled_tanh, replacement, examples())
    gm = apply(Noisy(), patterns, x=torch.randn(3, 4))
    assert count_ops(gm, aten.dropout) == 0  # the dead noise went with the match


def test_a_float_argument_that_never_appears_is_an_error():
    patterns = PatternSet()
    patterns.add(lambda x, unused: torch.tanh(x), None, examples())
    with pytest.raises(ValueError, match="cannot be captured"):
        patterns.apply(export(TwoScales(), x=torch.randn(3, 4)))
