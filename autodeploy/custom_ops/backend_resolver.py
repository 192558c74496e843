"""The one backend resolver: which backend of an op family each graph node gets, and why.

``resolve_backend(family, requested, device, node)`` is the only place a backend is chosen, for
every family (attention, rms_norm, rope, and what plugins add). Build-time support checks and
the ops' run-time input checks call the same ``supports``/``unavailable`` functions of the
backend (``op_backend.py``), so they cannot disagree.

- ``requested == "auto"``: the backends whose ``auto_priority`` lists ``device.type``, highest
  priority first; the first one that is available on the device and supports the node wins.
  None qualifying: ``BackendChoice.backend`` is None (the caller keeps the reference op or
  reports the problem).
- a name: that backend if it is available and supports the node, else ``backend`` is None and
  ``refused`` says why.

Every choice names the backends it did not take with the reason (``refused``). Transforms record
their choices on the graph (``record_choices``); the build summary prints them per family
(``format_backend_table``).

``build_device(gm, cm)`` is where a build runs: the device of the graph's real weights (after
``load_weights``), else the ``CachedSequenceInterface``'s device, else CPU.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule, Node

from ..utils.errors import ConfigError
from .op_backend import AUTO, BackendRegistry, OpBackend

BACKENDS_META_KEY = "autodeploy_backends"


class UnsupportedOpError(ConfigError):
    """A node uses a feature the requested backend does not implement, or the backend cannot
    run on this device (a build-time error: never a wrong answer at run time)."""


@dataclass
class BackendChoice:
    """The backend one node (or one whole graph, ``node=""``) got, and why others were not."""

    family: str
    node: str
    requested: str
    backend: str | None
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """Why the requested backend was refused ("" when one was chosen)."""
        if self.backend is not None:
            return ""
        if self.requested != AUTO:
            return self.refused.get(self.requested, "")
        return "; ".join(f"{n}: {r}" for n, r in self.refused.items()) or "no candidate"


def refusal(backend: type[OpBackend], device: torch.device, node: Node | None) -> str | None:
    """Why ``backend`` cannot take ``node`` on ``device`` (None: it can)."""
    reason = backend.unavailable(device)
    if reason is None and node is not None:
        reason = backend.supports(node)
    return reason


def auto_priority(backend: type[OpBackend], device: torch.device) -> int | None:
    """``backend``'s priority for ``auto`` on ``device`` (None: auto never picks it there);
    the key ``"*"`` stands for every device type."""
    table = backend.auto_priority
    return table.get(device.type, table.get("*"))


def auto_candidates(family: str, device: torch.device) -> list[type[OpBackend]]:
    """The backends ``auto`` may pick on ``device``, best first."""
    ranked = [(auto_priority(b, device), b) for b in BackendRegistry.backends(family)]
    eligible = [(p, b) for p, b in ranked if p is not None]
    return [b for _, b in sorted(eligible, key=lambda pb: (-pb[0], pb[1].name()))]


def resolve_backend(
    family: str,
    requested: str,
    device: torch.device | str,
    node: Node | None = None,
) -> BackendChoice:
    """The backend of ``family`` that ``node`` gets on ``device`` (see the module docstring)."""
    device = torch.device(device)
    where = node.name if node is not None else ""
    choice = BackendChoice(family=family, node=where, requested=requested, backend=None)
    if requested == AUTO:
        ordered = auto_candidates(family, device)
    else:
        ordered = [BackendRegistry.get(family, requested)]
    for backend in ordered:
        reason = refusal(backend, device, node)
        if reason is None:
            choice.backend = backend.name()
            break
        choice.refused[backend.name()] = reason
    for backend in BackendRegistry.backends(family):  # the others, for the summary
        name = backend.name()
        if name == choice.backend or name in choice.refused:
            continue
        if requested != AUTO:
            choice.refused[name] = f"not requested (backend: {requested})"
        elif backend in ordered:
            choice.refused[name] = f"lower auto priority than {choice.backend}"
        else:
            choice.refused[name] = f"auto does not pick it on {device.type}"
    return choice


def require_backend(choice: BackendChoice, error: type[Exception] = UnsupportedOpError) -> str:
    """The chosen backend's name, or ``error`` saying why the requested one was refused."""
    if choice.backend is not None:
        return choice.backend
    family = BackendRegistry.family(choice.family)
    where = f" cannot replace {choice.node}" if choice.node else " cannot be used"
    others = [n for n in BackendRegistry.names(choice.family) if n != choice.requested]
    hint = f" Set `{family.setting}` to one of: {', '.join(others)}." if family.setting else ""
    raise error(f"{choice.family} backend {choice.requested!r}{where}: {choice.reason}.{hint}")


def build_device(gm: Any, cm: Any = None) -> torch.device:
    """Where the build runs: the graph's real weights, else ``cm.device``, else CPU."""
    if isinstance(gm, torch.nn.Module):
        for tensor in itertools.chain(gm.parameters(), gm.buffers()):
            if tensor.device.type != "meta":
                return tensor.device
    device = getattr(cm, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def record_choices(gm: GraphModule, choices: list[BackendChoice]) -> None:
    """Keep ``choices`` on the graph for the build summary."""
    gm.meta.setdefault(BACKENDS_META_KEY, []).extend(asdict(c) for c in choices)


def recorded_choices(gm: Any) -> list[dict[str, Any]]:
    """The choices recorded on ``gm`` (or on the graph inside a compile wrapper)."""
    if not isinstance(gm, torch.nn.Module):
        return []
    for module in gm.modules():
        if isinstance(module, GraphModule) and BACKENDS_META_KEY in module.meta:
            return list(module.meta[BACKENDS_META_KEY])
    return []


def format_backend_table(rows: list[dict[str, Any]]) -> str:
    """Per family: each node's backend (or 'reference'), and why the other backends were not
    taken. Nodes with the same outcome are grouped, so a 32-layer model gives one line."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for row in rows:
        refused = "; ".join(f"{n}: {r}" for n, r in sorted(row["refused"].items()))
        key = (row["family"], row["requested"], row["backend"] or "reference (kept)", refused)
        groups.setdefault(key, []).append(row["node"] or "(graph)")
    lines = []
    for (family, requested, backend, refused), nodes in sorted(groups.items()):
        shown = ", ".join(nodes[:3]) + (f", ... ({len(nodes)} nodes)" if len(nodes) > 3 else "")
        lines.append(f"{family:<12} {backend:<18} requested={requested}  nodes: {shown}")
        if refused:
            lines.append(f"{'':<12}   not chosen: {refused}")
    return "\n".join(lines)
