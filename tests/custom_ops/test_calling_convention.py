"""Every cached-op backend follows its family's calling convention (declared once).

The convention (``custom_ops/cached_op.py``) fixes the argument names and order of every
backend's cached op and gives each op its fake; ``convention_problems`` compares an op and its
fake with it. These tests run it over every registered backend of every cached family, and show
that a drifted op or a hand-written fake is caught.
"""

from __future__ import annotations

import pytest
import torch

from autodeploy.custom_ops.attention.descriptor import (
    ATTENTION_CONVENTION,
    AttentionDescriptor,
)
from autodeploy.custom_ops.cached_op import (
    CachedOpDescriptor,
    convention_problems,
    register_convention_fake,
)
from autodeploy.custom_ops.op_backend import BackendRegistry

CACHED_BACKENDS = [
    (family, name)
    for family in BackendRegistry.families()
    if BackendRegistry.family(family).convention is not None
    for name in BackendRegistry.names(family)
    if not name.startswith("_")  # test backends registered by other test modules
]


def test_attention_backends_are_registered():
    assert {("attention", n) for n in ("torch", "triton", "flashinfer")} <= set(CACHED_BACKENDS)


@pytest.mark.parametrize(("family", "name"), CACHED_BACKENDS)
def test_backend_op_and_fake_follow_the_convention(family, name):
    backend = BackendRegistry.get(family, name)
    assert issubclass(backend, CachedOpDescriptor)
    assert convention_problems(backend) == []


@pytest.mark.parametrize(("family", "name"), CACHED_BACKENDS)
def test_fake_output_is_like_the_declared_input(family, name):
    """Every backend's fake, called with fake tensors, returns the ``output_like`` input's
    shape and dtype (the shape propagation of the cached graph relies on it)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    backend = BackendRegistry.get(family, name)
    if family != "attention":
        pytest.skip("example inputs are written for the attention convention")
    with FakeTensorMode():
        q = torch.empty(1, 5, 4, 8, dtype=torch.bfloat16)
        kv = torch.empty(1, 5, 2, 8, dtype=torch.bfloat16)
        meta = [torch.empty(3, dtype=torch.int32)] + [torch.empty(3, dtype=torch.int32)] * 4
        prepared = [torch.empty(5, dtype=torch.int32)] * len(backend.prepared_args)
        cache = torch.empty(4, 2, 2, 4, 8, dtype=torch.bfloat16)
        out = backend.get_cached_op()(q, kv, kv, *meta, *prepared, cache, None, None, None, None)
    assert out.shape == q.shape and out.dtype == q.dtype


# ---------------------------------------------------------------- drift is caught


# The attention convention's schema with two metadata names to fill in.
SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor {0}, Tensor {1}, Tensor input_pos, Tensor cache_loc, "
    "Tensor cu_num_pages, Tensor(a!) kv_cache, float? scale, SymInt? sliding_window, "
    "float? logit_cap, Tensor? sinks) -> Tensor"
)
torch.library.define(
    "autodeploy_convention_test::swapped", SCHEMA.format("cu_seqlen", "batch_info_host")
)
register_convention_fake(torch.ops.autodeploy_convention_test.swapped, ATTENTION_CONVENTION)
torch.library.define(
    "autodeploy_convention_test::own_fake", SCHEMA.format("batch_info_host", "cu_seqlen")
)


@torch.library.register_fake("autodeploy_convention_test::own_fake")
def _own_fake_fake(q, *args):
    return torch.empty_like(q)


def _descriptor(op) -> type[AttentionDescriptor]:
    """An unregistered attention backend around ``op`` (registration is not needed to check)."""

    class Drifted(AttentionDescriptor):
        family = "attention"

        @classmethod
        def get_cached_op(cls):
            return op

    return Drifted


def test_swapped_arguments_are_reported():
    problems = convention_problems(_descriptor(torch.ops.autodeploy_convention_test.swapped))
    assert len(problems) == 1 and "the convention says" in problems[0]
    assert "'cu_seqlen', 'batch_info_host'" in problems[0]


def test_a_hand_written_fake_is_reported():
    problems = convention_problems(_descriptor(torch.ops.autodeploy_convention_test.own_fake))
    assert problems == [
        "the fake of autodeploy_convention_test.own_fake was not made by "
        "register_convention_fake(op, <the family's convention>) (a hand-written fake can "
        "drift from the convention)"
    ]


def test_prepared_args_must_be_declared():
    """FlashInfer's op takes three prepare-metadata outputs; without ``prepared_args`` the
    same op no longer matches the convention."""
    flashinfer = BackendRegistry.get("attention", "flashinfer")

    class Undeclared(flashinfer):  # type: ignore[misc, valid-type]
        prepared_args = ()

    assert convention_problems(Undeclared) != []
