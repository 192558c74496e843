"""Export a model to a GraphModule (``torch_export_to_gm``) and the export patches."""

from . import library  # noqa: F401  (registers the built-in export patches)
from .devices import set_graph_device
from .export import torch_export_to_gm
from .interface import ExportPatch, ExportPatchRegistry, apply_export_patches

__all__ = [
    "ExportPatch",
    "ExportPatchRegistry",
    "apply_export_patches",
    "set_graph_device",
    "torch_export_to_gm",
]
