"""torch-direct: the CPU default compile backend calls autodeploy ops as Python functions.

The model it returns must compute exactly what the uncompiled graph computes (same greedy tokens,
same logits bit for bit on CPU) while no ``auto_deploy`` op node is left to go through the
dispatcher.
"""

from __future__ import annotations

import pytest
import torch

from autodeploy import LLM, SamplingParams
from autodeploy.compile.backends.torch_direct import (
    bind_weights,
    call_ops_directly,
    python_implementation,
)
from autodeploy.compile.registry import CompileBackendRegistry, CompileBackendUnavailableError

SETTINGS = dict(
    device="cpu",
    max_seq_len=64,
    max_batch_size=4,
    kv_cache_config={"tokens_per_block": 8, "max_tokens": 256},
)
PROMPTS = [[5, 9, 13, 2, 7], [3, 4], [11, 12, 13, 14, 15, 16, 17, 18, 19]]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def auto_deploy_op_nodes(gm) -> list:
    return [
        node
        for node in gm.graph.nodes
        if node.op == "call_function"
        and isinstance(node.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))
        and "auto_deploy" in str(node.target)
    ]


def test_every_reference_op_has_a_python_implementation():
    for op in (
        torch.ops.auto_deploy.torch_rmsnorm,
        torch.ops.auto_deploy.torch_rope_with_explicit_cos_sin.default,
        torch.ops.auto_deploy.torch_cached_attention,
        torch.ops.auto_deploy.sdpa_cached_attention.default,
    ):
        assert callable(python_implementation(op)), op
    assert python_implementation(torch.ops.aten.mm.default) is None
    assert python_implementation(torch.add) is None


def test_same_tokens_and_logits_as_the_uncompiled_graph():
    with LLM(model="builtin:tiny-llama", compile_backend="torch-simple", **SETTINGS) as simple:
        expected = [o.outputs[0].token_ids for o in simple.generate(PROMPTS, GREEDY)]
        gm, info = simple.model, simple.cm.info
        info.nest_sequences([PROMPTS[0]], input_pos=[0], cache_loc=[[1]])
        logits = gm(**simple.cm.named_args).clone()
        count = len(auto_deploy_op_nodes(gm))
        assert call_ops_directly(gm) == count > 0 and auto_deploy_op_nodes(gm) == []
        info.nest_sequences([PROMPTS[0]], input_pos=[0], cache_loc=[[1]])
        assert torch.equal(gm(**simple.cm.named_args), logits)
    with LLM(model="builtin:tiny-llama", **SETTINGS) as direct:  # auto: torch-direct on CPU
        assert auto_deploy_op_nodes(direct.model) == []
        got = [o.outputs[0].token_ids for o in direct.generate(PROMPTS, GREEDY)]
    assert got == expected


def test_bound_weights_are_the_modules_own_tensors():
    """Each weight read becomes one flat attribute; the logits stay bit-identical, nothing new is
    registered, and an in-place weight change reaches the bound graph."""
    with LLM(model="builtin:tiny-llama", compile_backend="torch-simple", **SETTINGS) as simple:
        gm, info = simple.model, simple.cm.info
        nested = {n.target for n in gm.graph.nodes if n.op == "get_attr" and "." in n.target}
        names = [name for name, _ in gm.named_parameters()]
        info.nest_sequences([PROMPTS[0]], input_pos=[0], cache_loc=[[1]])
        logits = gm(**simple.cm.named_args).clone()
        assert bind_weights(gm) == len(nested) > 0
        assert not [n for n in gm.graph.nodes if n.op == "get_attr" and "." in n.target]
        assert [name for name, _ in gm.named_parameters()] == names
        info.nest_sequences([PROMPTS[0]], input_pos=[0], cache_loc=[[1]])
        assert torch.equal(gm(**simple.cm.named_args), logits)
        with torch.no_grad():
            gm.get_parameter("model.norm.weight").zero_()  # the last norm now outputs zeros
        info.nest_sequences([PROMPTS[0]], input_pos=[0], cache_loc=[[1]])
        assert not gm(**simple.cm.named_args).any()


def test_refuses_a_non_cpu_model():
    class FakeInterface:
        device = torch.device("meta")

    backend = CompileBackendRegistry.get("torch-direct")(torch.nn.Linear(2, 2), FakeInterface())
    with pytest.raises(CompileBackendUnavailableError, match="only right on CPU"):
        backend.compile()
