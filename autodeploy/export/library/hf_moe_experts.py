"""Hugging Face experts modules call ``torch_moe`` while exporting (see ``models/hf_moe.py``).

Transformers looks up each experts module's forward in ``ALL_EXPERTS_FUNCTIONS`` by the
configured implementation name; during export every lookup returns ``experts_to_torch_moe``
instead, whatever the configured name, so the eager model is left untouched.
"""

from __future__ import annotations

from typing import Any

from ..interface import ExportPatch, ExportPatchRegistry


@ExportPatchRegistry.register("hf_moe_experts")
class HfMoeExperts(ExportPatch):
    def apply(self) -> None:
        from ...models.hf_moe import experts_to_torch_moe

        self._interface: Any = None
        try:
            from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
        except ImportError:  # a transformers without pluggable experts: nothing to route
            return
        self._interface = ALL_EXPERTS_FUNCTIONS
        # An instance attribute shadows the class method; deleting it restores the original.
        ALL_EXPERTS_FUNCTIONS.get_interface = lambda *args, **kwargs: experts_to_torch_moe

    def revert(self) -> None:
        if self._interface is not None:
            del self._interface.get_interface
