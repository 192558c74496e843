"""Mamba-2 mixers export as canonical ops: ``torch_causal_conv1d``, ``torch_ssm`` and
``torch_rmsnorm_gated``.

Every transformers model built from the Mamba-2 mixer (Mamba2, Nemotron-H, Bamba, Zamba2,
GraniteMoeHybrid) runs the same ``torch_forward``; its cache bookkeeping and kernel dispatch do
not trace. While exporting, the mixer's ``forward`` is replaced by the same math written with the
canonical ops (the cached ops take over the state later, in ``insert_cached_ssm_attention`` and
``insert_cached_causal_conv``). The conv's activation stays a separate node for
``fuse_causal_conv_activation``; ``-exp(A_log)`` stays in the graph for ``fuse_mamba_a_log``.

Mixers that look like Mamba but compute something else (Mamba-1, FalconH1's multipliers and
norm placement) fail the export with an ``ExportError`` naming the class and what is missing.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F

from ...utils.errors import ExportError
from ..interface import ExportPatch, ExportPatchRegistry

# transformers module -> mixer classes that run the Mamba-2 mixer math unchanged
_MAMBA2_MODULE = "transformers.models.mamba2.modeling_mamba2"
SUPPORTED_MIXERS: dict[str, tuple[str, ...]] = {
    _MAMBA2_MODULE: ("Mamba2Mixer",),
    "transformers.models.nemotron_h.modeling_nemotron_h": ("NemotronHMamba2Mixer",),
    "transformers.models.bamba.modeling_bamba": ("BambaMixer",),
    "transformers.models.granitemoehybrid.modeling_granitemoehybrid": (
        "GraniteMoeHybridMambaLayer",
    ),
    "transformers.models.zamba2.modeling_zamba2": ("Zamba2MambaMixer",),
}
# mixer classes that are not the Mamba-2 mixer -> what they need that is not implemented
UNSUPPORTED_MIXERS: dict[str, dict[str, str]] = {
    "transformers.models.falcon_h1.modeling_falcon_h1": {
        "FalconH1Mixer": "its muP multipliers on the projections (ssm_multipliers) and the "
        "norm_before_gate / optional gated norm",
    },
    "transformers.models.mamba.modeling_mamba": {
        "MambaMixer": "the Mamba-1 selective scan (per-channel A, x_proj/dt_proj); only the "
        "Mamba-2 scan (torch_ssm) exists",
    },
    "transformers.models.falcon_mamba.modeling_falcon_mamba": {
        "FalconMambaMixer": "the Mamba-1 selective scan with RMS-normalized B/C/dt",
    },
}


def mamba2_mixer_forward(
    self: Any, hidden_states: torch.Tensor, cache_params: Any = None, attention_mask: Any = None,
    **kwargs: Any,
) -> torch.Tensor:  # fmt: skip
    """The Mamba-2 mixer with canonical ops (no cache: the cached ops own the state)."""
    ad = torch.ops.auto_deploy
    batch, seq_len, _ = hidden_states.shape
    dtype = hidden_states.dtype
    projected = self.in_proj(hidden_states)  # [b, s, intermediate + conv_dim + num_heads]
    gate, x_bc, dt = projected.split(
        [self.intermediate_size, self.conv_dim, self.num_heads], dim=-1
    )
    x_bc = ad.torch_causal_conv1d(x_bc, self.conv1d.weight, self.conv1d.bias, None)
    x_bc = F.silu(x_bc)  # the mixer's activation (checked to be silu)
    groups_state = self.n_groups * self.ssm_state_size
    x, B, C = x_bc.split([self.intermediate_size, groups_state, groups_state], dim=-1)
    A = -torch.exp(self.A_log.float())
    y = ad.torch_ssm(
        x.view(batch, seq_len, self.num_heads, self.head_dim),
        A,
        B.view(batch, seq_len, self.n_groups, self.ssm_state_size),
        C.view(batch, seq_len, self.n_groups, self.ssm_state_size),
        self.D,
        dt,
        self.dt_bias,
        [float(v) for v in self.time_step_limit],
        int(self.chunk_size),
    )
    y = y.reshape(batch, seq_len, self.intermediate_size)
    norm = self.norm
    group_size = getattr(norm, "group_size", self.intermediate_size // self.n_groups)
    y = ad.torch_rmsnorm_gated(y, norm.weight, gate, norm.variance_epsilon, group_size, False)
    return self.out_proj(y.to(dtype))


def check_mixer(mixer: Any) -> None:
    """Raise ``ExportError`` if ``mixer`` asks for something ``mamba2_mixer_forward`` lacks."""
    name = type(mixer).__name__
    problems = []
    if getattr(mixer, "activation", "silu") != "silu":
        problems.append(f"activation {mixer.activation!r} (only 'silu')")
    if mixer.num_heads % mixer.n_groups != 0:
        problems.append(f"{mixer.num_heads} heads are not a multiple of {mixer.n_groups} groups")
    if mixer.conv1d.groups != mixer.conv_dim or mixer.conv1d.stride != (1,):
        problems.append("a conv1d that is not depthwise with stride 1")
    if problems:
        raise ExportError(f"{name} cannot be exported as a Mamba-2 mixer: {'; '.join(problems)}.")


def _checked_forward(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    check_mixer(self)
    return mamba2_mixer_forward(self, *args, **kwargs)


def _unsupported_forward(reason: str):
    def forward(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise ExportError(
            f"{type(self).__name__} is not supported: autodeploy exports the Mamba-2 mixer "
            f"(torch_ssm + torch_causal_conv1d), and this mixer needs {reason}."
        )

    return forward


def _with_position_ids(forward: Any):
    """Mamba2ForCausalLM takes ``position_ids`` only through ``**kwargs``, which torch.export
    cannot give a dynamic shape; a named (unused: Mamba has no positions) parameter can."""

    def forward_with_position_ids(
        self: Any, input_ids: Any = None, position_ids: Any = None, **kwargs: Any
    ) -> Any:
        return forward(self, input_ids=input_ids, **kwargs)

    return forward_with_position_ids


@ExportPatchRegistry.register("mamba2_mixer")
class Mamba2MixerPatch(ExportPatch):
    """Swap the ``forward`` of every known Mamba-style mixer class (see the module docstring)."""

    def apply(self) -> None:
        self._saved: list[tuple[type, Any]] = []
        for module_name, classes in SUPPORTED_MIXERS.items():
            for cls in _classes(module_name, classes):
                self._swap(cls, _checked_forward)
        for cls in _classes(_MAMBA2_MODULE, ("Mamba2ForCausalLM",)):
            self._swap(cls, _with_position_ids(cls.__dict__["forward"]))
        for module_name, reasons in UNSUPPORTED_MIXERS.items():
            for cls in _classes(module_name, tuple(reasons)):
                self._swap(cls, _unsupported_forward(reasons[cls.__name__]))

    def _swap(self, cls: type, forward: Any) -> None:
        self._saved.append((cls, cls.__dict__["forward"]))
        cls.forward = forward

    def revert(self) -> None:
        for cls, forward in reversed(self._saved):
            cls.forward = forward
        self._saved = []


def _classes(module_name: str, names: tuple[str, ...]) -> list[type]:
    """The named classes of a transformers module that is imported (a model being exported has
    imported its module; the others need no patch)."""
    module = sys.modules.get(module_name)
    if module is None:
        return []
    return [getattr(module, name) for name in names if hasattr(module, name)]
