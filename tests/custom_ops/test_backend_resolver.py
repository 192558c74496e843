"""The one backend resolver: auto by device and support, explicit requests, refusal reasons."""

from __future__ import annotations

import pytest
import torch
from torch.fx import symbolic_trace

from autodeploy.custom_ops.backend_resolver import (
    UnsupportedOpError,
    auto_candidates,
    build_device,
    format_backend_table,
    record_choices,
    recorded_choices,
    require_backend,
    resolve_backend,
)
from autodeploy.custom_ops.op_backend import (
    BackendRegistry,
    FamilyRegistry,
    OpBackend,
    OpFamily,
    check_backend_name,
)
from autodeploy.utils.errors import RegistryError

FAMILY = "resolver_test"
BackendRegistry.register_family(
    OpFamily(name=FAMILY, description="test family", setting="test.backend")
)


def _width(node) -> int:
    return int(node.meta["val"].shape[-1])


@BackendRegistry.register(FAMILY, "reference")
class _Reference(OpBackend):
    auto_priority = {"*": 0}


@BackendRegistry.register(FAMILY, "fast")
class _Fast(OpBackend):
    """Picked first on CUDA and CPU; only takes widths <= 8."""

    auto_priority = {"cuda": 20, "cpu": 20}

    @classmethod
    def supports(cls, node):
        return None if _width(node) <= 8 else f"width {_width(node)} > 8"


@BackendRegistry.register(FAMILY, "gpu_only")
class _GpuOnly(OpBackend):
    auto_priority = {"cuda": 10}

    @classmethod
    def unavailable(cls, device):
        return None if device is not None and device.type == "cuda" else "needs CUDA"


def _node(width: int):
    gm = symbolic_trace(lambda x: torch.relu(x))
    node = next(n for n in gm.graph.nodes if n.op == "call_function")
    node.meta["val"] = torch.empty(2, width, device="meta")
    return node


def test_auto_order_is_by_priority_on_the_device():
    names = [b.name() for b in auto_candidates(FAMILY, torch.device("cuda"))]
    assert names == ["fast", "gpu_only", "reference"]
    assert [b.name() for b in auto_candidates(FAMILY, torch.device("cpu"))] == [
        "fast",
        "reference",
    ]


def test_auto_takes_the_best_backend_that_supports_the_node():
    choice = resolve_backend(FAMILY, "auto", "cpu", _node(4))
    assert choice.backend == "fast"
    assert choice.refused == {
        "reference": "lower auto priority than fast",
        "gpu_only": "auto does not pick it on cpu",
    }
    wide = resolve_backend(FAMILY, "auto", "cpu", _node(16))
    assert wide.backend == "reference" and wide.refused["fast"] == "width 16 > 8"


def test_auto_skips_a_backend_unavailable_on_the_device():
    choice = resolve_backend(FAMILY, "auto", torch.device("cuda"), _node(16))
    assert choice.backend == "gpu_only" and choice.refused["fast"] == "width 16 > 8"


def test_explicit_request_refused_with_its_reason():
    choice = resolve_backend(FAMILY, "gpu_only", "cpu", _node(4))
    assert choice.backend is None and choice.reason == "needs CUDA"
    assert choice.refused["fast"] == "not requested (backend: gpu_only)"
    with pytest.raises(UnsupportedOpError, match=r"'gpu_only' cannot replace relu: needs CUDA"):
        require_backend(choice)
    assert require_backend(resolve_backend(FAMILY, "fast", "cpu", _node(4))) == "fast"


def test_unknown_names_suggest_close_ones():
    with pytest.raises(RegistryError, match="Did you mean 'fast'"):
        resolve_backend(FAMILY, "fats", "cpu")
    with pytest.raises(ValueError, match="Did you mean 'fast'"):
        check_backend_name(FAMILY, "fats")
    assert check_backend_name(FAMILY, "auto") == "auto"
    with pytest.raises(RegistryError, match="unknown op family 'resolver_tst'"):
        BackendRegistry.family("resolver_tst")


def test_a_name_is_registered_once_per_family():
    with pytest.raises(RegistryError, match="already registered"):
        BackendRegistry.register(FAMILY, "fast")(type("Other", (OpBackend,), {}))
    view = FamilyRegistry(FAMILY)
    assert view.names() == ["fast", "gpu_only", "reference"] and "fast" in view


def test_choices_are_recorded_and_grouped_in_the_summary_table():
    gm = symbolic_trace(lambda x: x + 1)
    nodes = [_node(4), _node(4), _node(16)]
    record_choices(gm, [resolve_backend(FAMILY, "auto", "cpu", n) for n in nodes])
    rows = recorded_choices(gm)
    assert [r["backend"] for r in rows] == ["fast", "fast", "reference"]
    table = format_backend_table(rows).splitlines()
    assert sum(line.startswith("resolver_test fast") for line in table) == 1  # grouped
    assert any("fast: width 16 > 8" in line for line in table)


def test_build_device_prefers_the_weights():
    module = torch.nn.Linear(2, 2)
    assert build_device(module, None).type == "cpu"
    meta = torch.nn.Linear(2, 2, device="meta")

    class Cm:
        device = torch.device("cuda")

    assert build_device(meta, Cm()).type == "cuda"
    assert build_device(meta, None).type == "cpu"
