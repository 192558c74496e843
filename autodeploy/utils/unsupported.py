"""Name the module a failure happened in, say what is not supported, and advise only what helps.

Used wherever a model step can fail inside the model's own code: the factory (building the
model, loading its checkpoint), export, and transforms that run the graph. The failing module
is found, in this order,

1. from the traceback: the innermost frame whose ``self`` is an ``nn.Module`` (export runs the
   model's Python code, so its ``forward`` frames are on the stack),
2. from a graph node: the exception names the node (``While executing %node``) and the node's
   ``nn_module_stack`` metadata records the module it was traced in,
3. from a parameter name: the module that owns ``model.layers.1.mlp.experts.gate_up_proj``.

Advice depends on the module's kind: ``attn_implementation`` is only suggested for attention
modules, and only when the failure is about attention arguments or masks.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

_KIND_PATTERNS = (
    ("mixture-of-experts", re.compile(r"moe|expert|router", re.IGNORECASE)),
    ("state-space (Mamba)", re.compile(r"mamba|ssm|mixer", re.IGNORECASE)),
    ("attention", re.compile(r"attention|attn", re.IGNORECASE)),
)
_EXECUTING = re.compile(r"While executing %(\w+)")

# (pattern in the error text, what it means). The first match describes what is unsupported.
_UNSUPPORTED_CONSTRUCTS = (
    (
        re.compile(r"data.dependent|GuardOnDataDependent|\.item\(\)|Could not guard", re.I),
        "control flow or shapes that depend on tensor values (if/while on values, .item(), "
        ".tolist(), nonzero) cannot be captured in a graph",
    ),
    (
        re.compile(r"meta|fake", re.I),
        "an operation that cannot run on the meta device (the model is traced without memory)",
    ),
    (
        re.compile(r"not implemented for|NotImplementedError", re.I),
        "an operation without an implementation for this dtype or device",
    ),
)


@dataclass(frozen=True)
class FailingModule:
    """Where a failure happened: the module's qualified name and class."""

    path: str  # "" for the root module
    class_name: str

    @property
    def kind(self) -> str:
        """'attention', 'mixture-of-experts', 'state-space (Mamba)' or 'other'."""
        for kind, pattern in _KIND_PATTERNS:
            if pattern.search(self.class_name):
                return kind
        return "other"

    def describe(self) -> str:
        where = f" at {self.path!r}" if self.path else ""
        return f"module {self.class_name}{where}"


def module_from_traceback(
    exc: BaseException, root: nn.Module | None = None
) -> FailingModule | None:
    """The innermost ``nn.Module`` whose method is on ``exc``'s traceback (chained ones too)."""
    names = {id(m): n for n, m in root.named_modules(remove_duplicate=False)} if root else {}
    found: FailingModule | None = None
    for error in _chain(exc):
        tb = error.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and (not names or id(owner) in names):
                found = FailingModule(names.get(id(owner), ""), type(owner).__name__)
            tb = tb.tb_next
        if found is not None:
            return found
    return None


def module_from_graph_node(exc: BaseException, gm: nn.Module | None) -> FailingModule | None:
    """The module a failing FX node was traced in (from its ``nn_module_stack``)."""
    graph = getattr(gm, "graph", None)
    if graph is None:
        return None
    text = "\n".join(_texts(exc))
    match = _EXECUTING.search(text)
    if match is None:
        return None
    node = next((n for n in graph.nodes if n.name == match.group(1)), None)
    return module_of_node(node) if node is not None else None


def module_of_node(node: Any) -> FailingModule | None:
    """The innermost module an FX node was traced in (from its ``nn_module_stack``)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, class_ref = list(stack.values())[-1]  # innermost module last
    class_name = class_ref if isinstance(class_ref, str) else getattr(class_ref, "__name__", "")
    return FailingModule(_clean_path(str(path)), class_name.rsplit(".", 1)[-1])


def module_owning(model: nn.Module, tensor_name: str) -> FailingModule | None:
    """The deepest submodule of ``model`` whose qualified name prefixes ``tensor_name``."""
    parts = tensor_name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        path = ".".join(parts[:cut])
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        return FailingModule(path, type(module).__name__)
    return None


def what_is_unsupported(exc: BaseException) -> str:
    """A short explanation of the construct that failed, from the error text ('' if unknown)."""
    text = "\n".join(_texts(exc))
    for pattern, meaning in _UNSUPPORTED_CONSTRUCTS:
        if pattern.search(text):
            return meaning
    return ""


def advice(module: FailingModule | None, exc: BaseException | None = None) -> str:
    """What the user can do, or '' when nothing they can set would help."""
    text = "\n".join(_texts(exc)) if exc is not None else ""
    kind = module.kind if module is not None else "other"
    if kind == "attention" and re.search(r"attention (argument|mask)|explicit attention", text):
        return (
            "This attention module may export through Hugging Face's own code: set "
            "`model_kwargs: {attn_implementation: sdpa}`."
        )
    if kind in ("mixture-of-experts", "state-space (Mamba)"):
        return (
            f"{kind.capitalize()} blocks of this architecture are not supported by this build "
            "of autodeploy (see 'What is supported' in the README); no setting works around it."
        )
    return (
        "autodeploy cannot run this module as written; an export patch for it "
        "(autodeploy/export/library) would be needed. Please file an issue with the model name."
    )


def graph_failure_note(exc: BaseException, gm: nn.Module | None) -> str:
    """`` The failing node belongs to module X at 'path' ...`` for a failure while running a
    graph ('' when the node or its module is unknown)."""
    module = module_from_graph_node(exc, gm)
    if module is None:
        return ""
    unsupported = what_is_unsupported(exc)
    note = f" The failing node was traced in {module.describe()}"
    note += f" ({unsupported})." if unsupported else "."
    if module.kind != "other":
        note += f" {advice(module, exc)}"
    return note.rstrip(".")  # the caller's sentence continues


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _texts(exc: BaseException | None) -> list[str]:
    if exc is None:
        return []
    texts = []
    for error in _chain(exc):
        texts.append(f"{type(error).__name__}: {error}")
        texts += list(getattr(error, "__notes__", []) or [])
    return texts


def _clean_path(path: str) -> str:
    """``L['self'].model.layers[0].mlp`` (export's spelling) -> ``model.layers.0.mlp``."""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    return re.sub(r"\[(\d+)\]", r".\1", path).replace("._modules['", ".").replace("']", "")


def format_frames(exc: BaseException, skip: tuple[str, ...] = ("/torch/",)) -> str:
    """``file:line (code)`` of the innermost frame outside ``skip`` ('' when there is none)."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if not any(s in f.filename for s in skip)]
    return f"{user[-1].filename}:{user[-1].lineno} ({user[-1].line})" if user else ""
