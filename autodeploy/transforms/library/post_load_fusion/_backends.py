"""Kernel-backend choice of the post_load_fusion transforms, through the one resolver.

``backend`` of ``fuse_rmsnorm``, ``fuse_add_rms_norm`` (family ``rms_norm``) and
``optimize_rope`` (family ``rope``) is resolved per node by
``custom_ops.backend_resolver.resolve_backend`` on the device the graph's weights are on:

- ``auto`` (default): the highest-priority backend for the device that supports the node
  (Triton on CUDA). On other devices no kernel backend is eligible: the reference ops stay
  (logged with the reason), which is what a CPU should run.
- ``triton`` / ``flashinfer``: asked for explicitly. The backend's ops must be registered (its
  package installed), else the configuration is rejected. When the backend cannot run on the
  device (Triton on CPU without ``TRITON_INTERPRET=1``, FlashInfer off CUDA) the transform is
  skipped and the build reports the problem (an error in strict mode). A node the backend does
  not support keeps its reference op (logged).
- ``torch``: the reference ops (a pure graph rewrite where the transform has one).

Every node's choice, with the reasons the other backends were not taken, is recorded for the
build summary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.fx import GraphModule, Node

from ....custom_ops.backend_resolver import build_device, record_choices, resolve_backend
from ....custom_ops.op_backend import AUTO, BackendRegistry
from ....utils.logger import logger
from ...interface import TransformInfo

if TYPE_CHECKING:
    from ...base import BaseTransform
    from ...interface import SharedConfig


def backend_description(torch_meaning: str, others: str = "") -> str:
    """The ``backend`` field's description; ``torch_meaning``: what 'torch' does here."""
    return (
        f"Kernel backend: 'auto' (Triton on CUDA; off CUDA the transform is skipped), 'triton'"
        f"{others}, 'torch' ({torch_meaning}). An explicit GPU backend off CUDA is reported as "
        "a build problem (Triton on CPU runs only with TRITON_INTERPRET=1, for tests)."
    )


UNCHANGED = TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)


def check_backend_installed(family: str, backend: str) -> str:
    """Pydantic validator body: an explicit backend must be usable in this process."""
    if backend == AUTO:
        return backend
    reason = BackendRegistry.get(family, backend).unavailable(None)
    if reason is not None:
        raise ValueError(
            f"backend {backend!r} is not available: {reason}. Use backend 'auto' or 'torch'."
        )
    return backend


def node_backends(
    transform: BaseTransform,
    family: str,
    requested: str,
    gm: GraphModule,
    cm: Any,
    nodes: list[Node],
    shared_config: SharedConfig,
) -> list[str | None]:
    """The backend of each node (None: it keeps its reference op); see the module docstring."""
    device = build_device(gm, cm)
    if requested != AUTO:
        reason = BackendRegistry.get(family, requested).unavailable(device)
        if reason is not None:
            transform.report_problem(
                shared_config,
                f"backend {requested!r} {_as_clause(reason)}; the reference ops stay. Use "
                "backend 'auto' or 'torch'.",
            )
            return [None] * len(nodes)
    choices = [resolve_backend(family, requested, device, node) for node in nodes]
    record_choices(gm, choices)
    kept = [c for c in choices if c.backend is None]
    if kept and requested == AUTO and len(kept) == len(choices):
        logger.info(
            "skipped: no %s kernel backend for the graph's device %s (%s); the reference ops stay",
            family,
            device,
            kept[0].reason,
        )
    else:
        for choice in kept:
            logger.info("%s keeps its reference op: %s", choice.node, choice.reason)
    return [c.backend for c in choices]


def _as_clause(reason: str) -> str:
    """'needs a CUDA device ...' reads after the backend name; other reasons after 'cannot'."""
    return reason if reason.startswith("needs ") else f"cannot run here: {reason}"
