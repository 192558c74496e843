"""Mamba-2 mixer coverage: one ``torch_ssm`` and one ``torch_causal_conv1d`` per mixer layer.

The mixer layers come from the model's layer pattern: ``config.layer_types`` entries that are
linear-attention / Mamba layers (transformers names Mamba-2 layers ``"linear_attention"``;
Zamba2's ``"hybrid"`` layers hold a mixer too) of a model whose config describes an SSM
(``ssm_state_size`` / ``mamba_d_state`` / ``state_size``). Without a layer pattern, the layers
whose Mamba mixer module shows up in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import Node

from ...graph_utils import is_op

ad = torch.ops.auto_deploy
_MIXER_LAYER_TYPES = ("linear_attention", "mamba", "hybrid")
_SSM_CONFIG_KEYS = ("ssm_state_size", "mamba_d_state", "state_size")


@dataclass
class SSMCoverage:
    expected_layers: list[int] = field(default_factory=list)
    ssm_layers: list[int] = field(default_factory=list)
    conv_layers: list[int] = field(default_factory=list)

    @property
    def missing_ssm_layers(self) -> list[int]:
        return [i for i in self.expected_layers if i not in self.ssm_layers]

    @property
    def missing_conv_layers(self) -> list[int]:
        return [i for i in self.expected_layers if i not in self.conv_layers]

    @property
    def ok(self) -> bool:
        return not self.missing_ssm_layers and not self.missing_conv_layers

    def format(self) -> str:
        total = len(self.expected_layers)
        line = (
            f"  ssm: {total - len(self.missing_ssm_layers)}/{total} mixer layers -> torch_ssm, "
            f"{total - len(self.missing_conv_layers)}/{total} -> torch_causal_conv1d"
        )
        if self.missing_ssm_layers:
            line += f"\n    MISSING torch_ssm in layers {self.missing_ssm_layers}"
        if self.missing_conv_layers:
            line += f"\n    MISSING torch_causal_conv1d in layers {self.missing_conv_layers}"
        return line


def collect_ssm_coverage(
    nodes: list[Node], config: Any, layer_of: Any, mixer_layers: set[int]
) -> SSMCoverage:
    """``layer_of(node)``: the layer index of a node (None without module info);
    ``mixer_layers``: layers whose Mamba mixer module shows up in the graph."""
    ssm = [layer_of(n) for n in nodes if is_op(n, ad.torch_ssm)]
    conv = [layer_of(n) for n in nodes if is_op(n, ad.torch_causal_conv1d)]
    layer_types = getattr(config, "layer_types", None) if config is not None else None
    is_ssm_model = config is not None and any(hasattr(config, k) for k in _SSM_CONFIG_KEYS)
    if layer_types and is_ssm_model:
        expected = [i for i, t in enumerate(layer_types) if t in _MIXER_LAYER_TYPES]
    else:
        expected = sorted(mixer_layers)
    if ssm and all(layer is None for layer in ssm + conv):  # no module info: count only
        ssm, conv = expected[: len(ssm)], expected[: len(conv)]
    found_ssm = sorted(layer for layer in ssm if layer is not None)
    found_conv = sorted(layer for layer in conv if layer is not None)
    return SSMCoverage(expected, found_ssm, found_conv)
