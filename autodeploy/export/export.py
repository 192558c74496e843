"""``torch_export_to_gm``: capture a model as a plain, keyword-callable ``GraphModule``.

Steps: trace everything on the meta device (no memory, no compute), with export patches; turn
the exported program into a GraphModule whose ``forward`` takes the example inputs by name and
returns the first output (the logits); put real buffers back; keep the source model's parameter
names, tied parameters, non-persistent buffers and load-state-dict hooks, so the graph loads the
original checkpoint unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.fx import GraphModule
from torch.fx.graph import CodeGen

from ..utils.errors import ExportError, UnsupportedModelError
from ..utils.unsupported import (
    advice,
    first_line,
    format_frames,
    module_from_traceback,
    what_is_unsupported,
)
from .interface import apply_export_patches

# Runtime checks export leaves in the graph; our inputs change shape every step.
_CHECK_OPS = (
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten._assert_tensor_metadata.default,
    torch.ops.aten.sym_constrain_range.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
)


def torch_export_to_gm(
    model: nn.Module,
    kwargs: dict[str, torch.Tensor],
    dynamic_shapes: dict[str, Any],
    *,
    strict: bool = False,
    patches: Sequence[str] | None = None,
    model_name: str = "model",
) -> GraphModule:
    """Export ``model(**kwargs)``; see the module docstring for what the result keeps."""
    meta_kwargs = {k: v.to("meta") for k, v in kwargs.items()}
    with _on_meta(model) as real_tensors, apply_export_patches(patches), torch.no_grad():
        try:
            program = torch.export.export(
                model, (), meta_kwargs, dynamic_shapes=dynamic_shapes, strict=strict
            )
        except Exception as exc:
            raise _describe_failure(model, model_name, exc) from exc
    gm = program.module()
    _make_plain(gm, list(kwargs))
    _restore_tensors(gm, real_tensors)
    _copy_module_state(model, gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


@contextlib.contextmanager
def _on_meta(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Temporarily move real parameters and buffers to meta; yield the originals by name."""
    real: dict[str, torch.Tensor] = {}
    swapped: list[tuple[nn.Module, str, str, torch.Tensor]] = []
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for kind in ("_parameters", "_buffers"):
            table = getattr(module, kind)
            for name, tensor in list(table.items()):
                if tensor is None or tensor.device.type == "meta":
                    continue
                full = f"{mod_name}.{name}" if mod_name else name
                real[full] = tensor
                meta = tensor.to("meta")
                table[name] = (
                    nn.Parameter(meta, tensor.requires_grad) if kind == "_parameters" else meta
                )
                swapped.append((module, kind, name, tensor))
    try:
        yield real
    finally:
        for module, kind, name, tensor in swapped:
            getattr(module, kind)[name] = tensor


def _make_plain(gm: GraphModule, input_names: list[str]) -> None:
    """Drop pytree (un)flattening and export's guard/check nodes; return a single tensor."""
    graph = gm.graph
    graph._codegen = CodeGen()
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
        elif node.op == "call_function" and node.target in _CHECK_OPS:
            graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        delattr(gm, "_guards_fn")
    # export adds a forward pre-hook that re-checks input shapes against the export-time ranges
    # on every call: per-step overhead, and it rejects the cache inputs transforms add later.
    for hook_id, hook in list(gm._forward_pre_hooks.items()):
        if "check_input_constraints" in getattr(hook, "__name__", ""):
            del gm._forward_pre_hooks[hook_id]
            gm._forward_pre_hooks_with_kwargs.pop(hook_id, None)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if [p.target for p in placeholders] != input_names:
        raise ExportError(
            f"Exported inputs {[p.target for p in placeholders]} do not match the example "
            f"inputs {input_names}."
        )
    output = graph.output_node()
    flat = torch.utils._pytree.tree_leaves(output.args[0])
    tensors = [a for a in flat if isinstance(a, torch.fx.Node)]
    if not tensors:
        raise ExportError("The exported model returns no tensor (expected logits first).")
    output.args = (tensors[0],)  # the logits; other outputs (hidden states, ...) are unused
    gm.recompile()


def _restore_tensors(gm: GraphModule, real: dict[str, torch.Tensor]) -> None:
    """Put the real buffer/parameter values back where export left meta copies."""
    for full, tensor in real.items():
        owner_name, _, leaf = full.rpartition(".")
        try:
            owner = gm.get_submodule(owner_name) if owner_name else gm
        except AttributeError:
            continue  # not used by the graph
        if leaf in owner._buffers:
            owner._buffers[leaf] = tensor
        elif leaf in owner._parameters:
            owner._parameters[leaf] = (
                tensor
                if isinstance(tensor, nn.Parameter)
                else nn.Parameter(tensor, requires_grad=False)
            )


def _copy_module_state(source: nn.Module, gm: GraphModule) -> None:
    """Keep names/aliases of parameters, buffer persistence, and load hooks of the source."""
    params = dict(source.named_parameters(remove_duplicate=False))
    canonical: dict[int, str] = {}
    for name, param in params.items():
        canonical.setdefault(id(param), name)
    for name, param in params.items():
        first = canonical[id(param)]
        if first != name and _has_tensor(gm, first):
            _set_param(gm, name, gm.get_parameter(first))  # tied weights stay one tensor
    for mod_name, module in source.named_modules():
        try:
            target = gm.get_submodule(mod_name) if mod_name else gm
        except AttributeError:
            continue
        for buf in module._non_persistent_buffers_set:
            if buf in target._buffers:
                target._non_persistent_buffers_set.add(buf)
        for hook_id, hook in module._load_state_dict_pre_hooks.items():
            target._load_state_dict_pre_hooks.setdefault(hook_id, hook)


def _has_tensor(gm: GraphModule, name: str) -> bool:
    try:
        gm.get_parameter(name)
        return True
    except AttributeError:
        return False


def _set_param(gm: GraphModule, name: str, param: nn.Parameter) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = _get_or_create_submodule(gm, owner_name)
    owner._parameters[leaf] = param


def _get_or_create_submodule(gm: GraphModule, path: str) -> nn.Module:
    module: nn.Module = gm
    for part in [p for p in path.split(".") if p]:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    return module


def _describe_failure(model: nn.Module, model_name: str, exc: Exception) -> ExportError:
    """Name the model, the failing module and construct, what is unsupported, and a hint."""
    module = module_from_traceback(exc, model)
    where = format_frames(exc, skip=("/torch/", "/autodeploy/"))
    at = f" at {where}" if where else ""
    inside = f" in {module.describe()}" if module is not None and module.path else ""
    message = f"torch.export failed for {model_name}{inside}{at}: {type(exc).__name__}: "
    message += first_line(exc)
    unsupported = what_is_unsupported(exc)
    if unsupported:
        message += f"\nNot supported: {unsupported}."
    message += (
        f"\nHint: {advice(module, exc)} Set AUTODEPLOY_LOG_LEVEL=DEBUG and see the chained "
        "exception for the full trace."
    )
    error_type = UnsupportedModelError if module is not None and module.path else ExportError
    return error_type(message)
