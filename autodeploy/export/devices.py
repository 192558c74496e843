"""Point device arguments recorded in the graph at the device the model runs on.

The graph is traced on the meta device, so ops that create tensors (``arange``, ``zeros``,
``full``, ...) carry ``device=meta``. Before running, those must name the real device.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule


def set_graph_device(gm: GraphModule, device: torch.device | str) -> int:
    """Rewrite every ``device=`` keyword (and ``to(device)`` argument) to ``device``."""
    device = torch.device(device)
    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if isinstance(node.kwargs.get("device"), torch.device) and node.kwargs["device"] != device:
            node.update_kwarg("device", device)
            changed += 1
        new_args = [device if isinstance(a, torch.device) and a != device else a for a in node.args]
        if new_args != list(node.args):
            node.args = tuple(new_args)
            changed += 1
    if changed:
        gm.recompile()
    return changed
