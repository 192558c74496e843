"""A test plugin that adds a new cached op family, ``running_sum``, from outside the package.

Loaded through ``AUTODEPLOY_PLUGINS=running_sum_plugin`` (nothing in ``autodeploy`` knows it);
``tests/test_op_family_plugin.py`` builds and runs it. It is the worked example of the README's
"Adding an op family or a backend":

- a canonical op ``running_sum_plugin::torch_running_sum(x, decay)``: per sequence and channel
  the recurrence ``state_t = decay * state_{t-1} + x_t``, output ``state_t`` (state 0 before
  the first token);
- the ``running_sum`` family with its calling convention, and a reference backend ``torch``
  whose cached op keeps one state per sequence slot (``StateResourceHandler``, addressed by
  ``slot_idx``) and reads a metadata region this plugin adds (``running_sum_fresh``: 1 for a
  sequence whose first token is in this step);
- the transform ``insert_cached_running_sum`` (stage cache_init), a thin wrapper over the
  package's generic insertion routine;
- a model factory ``running_sum_tiny``: embedding, two layers of (``torch_attention`` + the
  running sum), an LM head; random weights from a seed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field, field_validator
from torch import Tensor
from torch.export import Dim

from autodeploy.custom_ops.cached_op import (
    CachedOpDescriptor,
    CallingConvention,
    register_convention_fake,
)
from autodeploy.custom_ops.op_backend import BackendRegistry, OpFamily, check_backend_name
from autodeploy.models.factory import ModelFactory, ModelFactoryRegistry
from autodeploy.shim import Region, StateResourceHandler
from autodeploy.transforms import BaseTransform, TransformConfig, TransformInfo, TransformRegistry
from autodeploy.transforms.library.cache_init._cached_op_insertion import insert_cached_ops
from autodeploy.utils.node_args import bound_args, node_val

FAMILY = "running_sum"
FRESH = "running_sum_fresh"  # this plugin's metadata region


# ---------------------------------------------------------------------------------- the ops
@torch.library.custom_op("running_sum_plugin::torch_running_sum", mutates_args=())
def torch_running_sum(x: Tensor, decay: float) -> Tensor:
    """x: [b, s, d] -> [b, s, d]; the recurrence runs along s for each row b (float32)."""
    state = torch.zeros(x.shape[0], x.shape[2], dtype=torch.float32, device=x.device)
    out = torch.empty_like(x)
    for t in range(x.shape[1]):
        state = decay * state + x[:, t].float()
        out[:, t] = state.to(x.dtype)
    return out


@torch_running_sum.register_fake
def _torch_running_sum_fake(x, decay):
    return torch.empty_like(x)


CONVENTION = CallingConvention(
    source_op="running_sum_plugin::torch_running_sum",
    inputs=("x",),
    metadata=("batch_info_host", "cu_seqlen", "slot_idx", FRESH),
    caches=("state",),
    constants=("decay",),
    output_like="x",
)
BackendRegistry.register_family(
    OpFamily(
        name=FAMILY,
        description="decayed running sum over each sequence (a per-slot state)",
        setting="insert_cached_running_sum.backend",
        convention=CONVENTION,
    )
)


@torch.library.custom_op("running_sum_plugin::torch_cached_running_sum", mutates_args=("state",))
def torch_cached_running_sum(
    x: Tensor,  # [1, T, d] (batch with prefill) or [B, 1, d] (decode only)
    batch_info_host: Tensor,  # CPU [3]: num_prefill, num_prefill_tokens, num_decode
    cu_seqlen: Tensor,  # [B + 1]
    slot_idx: Tensor,  # [B]
    running_sum_fresh: Tensor,  # [B]: 1 when the sequence starts in this step
    state: Tensor,  # [slots, d] float32
    decay: float,
) -> Tensor:
    tokens = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(tokens)
    num_prefill, _, num_decode = batch_info_host.tolist()
    starts = cu_seqlen.tolist()
    for i in range(num_prefill + num_decode):
        slot = int(slot_idx[i])
        value = torch.zeros_like(state[slot]) if int(running_sum_fresh[i]) else state[slot]
        for t in range(starts[i], starts[i + 1]):
            value = decay * value + tokens[t].float()
            out[t] = value.to(x.dtype)
        state[slot] = value
    return out.view(x.shape)


register_convention_fake(torch_cached_running_sum, CONVENTION)


@BackendRegistry.register(FAMILY, "torch")
class TorchCachedRunningSum(CachedOpDescriptor):
    """Reference backend: a Python loop over sequences and tokens, any device."""

    auto_priority = {"*": 0}

    @classmethod
    def get_cached_op(cls):
        return torch.ops.running_sum_plugin.torch_cached_running_sum

    @classmethod
    def get_cache_initializers(cls, node, cache_config):
        x = node_val(bound_args(node)["x"])
        return {"state": StateResourceHandler(int(x.shape[-1]), dtype=torch.float32)}

    @classmethod
    def supports(cls, node):
        x = node_val(bound_args(node)["x"])
        return None if x is None or x.dim() == 3 else f"x must be [b, s, d], got {x.dim()}-D"


def _fill_fresh(step, out):
    """1 for rows whose first token is in this step (input_pos == 0)."""
    out[:] = step.input_pos == 0


# ---------------------------------------------------------------------------------- transform
class InsertCachedRunningSumConfig(TransformConfig):
    backend: str = Field(default="auto", description="running_sum backend ('torch').")
    requires_shape_prop: bool = Field(default=True, description="Read d from the shapes.")

    @field_validator("backend")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_backend_name(FAMILY, value)


@TransformRegistry.register("insert_cached_running_sum")
class InsertCachedRunningSum(BaseTransform):
    """Running sums become the backend's cached op with one state per sequence slot.

    before: ``y = torch_running_sum(x, decay)``
    after:  ``y = <backend>_cached_running_sum(x, batch_info_host, cu_seqlen, slot_idx,
            running_sum_fresh, state_<i>, decay)``
    """

    @classmethod
    def get_config_class(cls):
        return InsertCachedRunningSumConfig

    def _apply(self, gm, cm, factory, shared_config):
        cm.info.add_region(Region(FRESH, torch.int32, "row", fill=_fill_fresh))
        done = insert_cached_ops(gm, cm, FAMILY, self.config.backend)
        return gm, TransformInfo(
            skipped=done.num_replaced == 0,
            num_matches=done.num_replaced,
            is_clean=done.num_replaced == 0,
            has_valid_shapes=done.num_replaced == 0,
        )


# ---------------------------------------------------------------------------------- a model
VOCAB, HIDDEN, HEADS, HEAD_DIM, DECAY = 64, 32, 4, 8, 0.75


class RunningSumModel(nn.Module):
    """Each layer: x += attention(x); x += running_sum(x) * 0.5. Logits from a linear head."""

    def __init__(self, num_layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.qkv = nn.ModuleList(nn.Linear(HIDDEN, 3 * HIDDEN) for _ in range(num_layers))
        self.mix = nn.ModuleList(nn.Linear(HIDDEN, HIDDEN) for _ in range(num_layers))
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        b, s = input_ids.shape
        x = self.embed(input_ids) + position_ids[..., None].float() * 0.01
        for qkv, mix in zip(self.qkv, self.mix):
            q, k, v = qkv(x).view(b, s, 3, HEADS, HEAD_DIM).unbind(2)
            x = x + torch.ops.auto_deploy.torch_attention(q, k, v).reshape(b, s, HIDDEN)
            x = x + 0.5 * torch.ops.running_sum_plugin.torch_running_sum(mix(x), DECAY)
        return self.head(x)


@ModelFactoryRegistry.register("running_sum_tiny")
class RunningSumFactory(ModelFactory):
    """``RunningSumModel`` with random weights from ``seed`` (no checkpoint, no tokenizer)."""

    def build_model(self, device="meta"):
        with torch.device(device):
            return RunningSumModel()

    def load_or_random_init(self, model, device):
        model.to_empty(device=device)
        reference = reference_model()
        model.load_state_dict(reference.state_dict())

    def get_example_inputs(self):
        return {
            "input_ids": torch.zeros(2, 4, dtype=torch.long),
            "position_ids": torch.arange(4).repeat(2, 1),
        }

    def get_dynamic_shapes(self):
        dims = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
        return {"input_ids": dims, "position_ids": dict(dims)}


def reference_model() -> RunningSumModel:
    """The eager model with the weights every build gets (seed 0)."""
    torch.manual_seed(0)
    return RunningSumModel().eval()
