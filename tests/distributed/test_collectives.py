"""torch_dist_all_reduce / torch_dist_all_gather: fakes and the single-process identity.

Their values on real ranks are checked by tests/distributed/test_multi_rank.py: every split
model there runs them, and its greedy tokens must equal Hugging Face's.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import autodeploy.custom_ops  # noqa: F401

ad = torch.ops.auto_deploy


def test_fakes_and_single_process_identity():
    with FakeTensorMode():
        x = torch.empty(4, 1, 8)
        assert ad.torch_dist_all_reduce(x).shape == (4, 1, 8)
        assert ad.torch_dist_all_gather(x, -1, 4).shape == (4, 1, 32)
    x = torch.randn(2, 3)
    assert torch.equal(ad.torch_dist_all_reduce(x), x)  # no process group: one rank
