"""What the pattern matchers found, per layer, next to what the model config says exists.

``collect_coverage(gm, config)`` reads the graph (canonical ops, and the module each node came
from: ``node.meta["nn_module_stack"]``) and the Hugging Face config (may be ``None``);
``format_coverage`` renders it for logs and graph dumps.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule, Node

from ...graph_utils import is_op
from ...pattern import bound_args
from ._moe_coverage import MoECoverage, collect_moe_coverage, format_moe_coverage
from ._ssm_coverage import SSMCoverage, collect_ssm_coverage

ad = torch.ops.auto_deploy
aten = torch.ops.aten

ATTENTION_OPS = (ad.torch_attention.default,)
ROPE_OPS = {
    ad.torch_rope_with_explicit_cos_sin.default: "rotate_half (cos/sin)",
    ad.torch_rope_with_complex_freqs.default: "complex frequencies",
    ad.torch_rope_with_qk_interleaving.default: "interleaved q/k (DeepSeek)",
}
NORM_OPS = {
    ad.torch_rmsnorm.default: "rmsnorm",
    ad.torch_rmsnorm_gated.default: "rmsnorm_gated",
    ad.torch_l2norm.default: "l2norm",
}
# Leftovers that tell which matcher should have caught an unmatched attention layer.
_ATTENTION_HINTS = (
    (aten.scaled_dot_product_attention.default, "match_sdpa_to_torch_attention"),
    (aten.softmax.int, "match_eager_attention"),
    (aten._softmax.default, "match_eager_attention"),
)
_ATTENTION_MODULE = re.compile(r"Attention\d*$")  # LlamaAttention, old *FlashAttention2
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


@dataclass
class AttentionSite:
    layer: int | None
    module: str
    layout: str
    is_causal: bool
    scale: float | None
    sliding_window: int | None
    logit_cap: float | None
    sinks: bool
    num_heads: int | None
    num_kv_heads: int | None

    def kind(self) -> str:
        parts = ["causal" if self.is_causal else "full", self.layout]
        if self.num_heads and self.num_kv_heads and self.num_heads != self.num_kv_heads:
            parts.append(f"gqa {self.num_heads}/{self.num_kv_heads}")
        if self.sliding_window is not None:
            parts.append(f"window={self.sliding_window}")
        if self.logit_cap is not None:
            parts.append(f"logit_cap={self.logit_cap:g}")
        if self.sinks:
            parts.append("sinks")
        if self.scale is not None:
            parts.append(f"scale={self.scale:.4g}")
        return ", ".join(parts)


@dataclass
class Coverage:
    model_type: str | None
    expected_attention_layers: list[int]
    attention: list[AttentionSite]
    missing_attention_layers: list[int]
    attention_hints: dict[int, str]
    feature_mismatches: list[str]
    rope: dict[str, int]
    expected_rope_layers: list[int]
    missing_rope_layers: list[int]
    norms: dict[str, int]
    unmatched_norm_modules: list[str]
    other_norms: dict[str, int]
    mlp_modules: int
    fused_mlps: int
    modules: dict[int, str] = field(default_factory=dict)  # layer -> attention module path
    moe: MoECoverage = field(default_factory=MoECoverage)
    ssm: SSMCoverage = field(default_factory=SSMCoverage)  # Mamba-2 mixer layers

    @property
    def attention_ok(self) -> bool:
        return not self.missing_attention_layers and not self.feature_mismatches

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _module_stack(node: Node) -> list[tuple[str, str]]:
    stack = node.meta.get("nn_module_stack") or {}
    return [(path, str(cls)) for path, cls in stack.values()]


def _class_name(cls: str) -> str:
    return cls.rsplit(".", 1)[-1].rstrip("'>")


def _layer_of(path: str) -> int | None:
    found = _LAYER_INDEX.search(path)
    return int(found.group(1)) if found else None


def _innermost(node: Node, suffix: str | None = None) -> tuple[str, str] | None:
    for path, cls in reversed(_module_stack(node)):
        if suffix is None or _class_name(cls).endswith(suffix):
            return path, _class_name(cls)
    return None


def _attention_site(node: Node) -> AttentionSite:
    args = bound_args(node)
    module = _innermost(node, "Attention") or _innermost(node) or ("", "")
    heads_dim = 2 if args["layout"] == "bsnd" else 1
    q, k = args["query"].meta.get("val"), args["key"].meta.get("val")
    return AttentionSite(
        layer=_layer_of(module[0]),
        module=module[0],
        layout=args["layout"],
        is_causal=bool(args["is_causal"]),
        scale=args["scale"],
        sliding_window=args["sliding_window"],
        logit_cap=args["logit_cap"],
        sinks=args["sinks"] is not None,
        num_heads=int(q.shape[heads_dim]) if q is not None else None,
        num_kv_heads=int(k.shape[heads_dim]) if k is not None else None,
    )


def _expected_attention_layers(config: Any, graph_layers: set[int]) -> list[int]:
    """The config's ``layer_types`` if it has them; else the layers whose attention module
    shows up in the graph (every executed module does, matched or not); else all layers."""
    layer_types = getattr(config, "layer_types", None) if config is not None else None
    if layer_types:
        # "hybrid" (Zamba2): a Mamba mixer plus the shared attention block
        return [
            i
            for i, t in enumerate(layer_types)
            if ("attention" in t and "linear" not in t) or t == "hybrid"
        ]
    if graph_layers:
        return sorted(graph_layers)
    return list(range(getattr(config, "num_hidden_layers", 0) or 0))


def _expected_windows(config: Any, layers: list[int]) -> dict[int, int | None]:
    """The sliding window HF applies per attention layer (None: full causal)."""
    window = getattr(config, "sliding_window", None) if config is not None else None
    layer_types = getattr(config, "layer_types", None) if config is not None else None
    if layer_types:
        return {i: window if layer_types[i] == "sliding_attention" else None for i in layers}
    if window is not None and getattr(config, "use_sliding_window", True):
        return dict.fromkeys(layers, window)
    return dict.fromkeys(layers)


def _feature_mismatches(config: Any, sites: list[AttentionSite]) -> list[str]:
    if config is None:
        return []
    problems = []
    windows = _expected_windows(config, [s.layer for s in sites if s.layer is not None])
    wrong = [s.layer for s in sites if s.layer in windows and s.sliding_window != windows[s.layer]]
    if wrong:
        problems.append(
            f"sliding window differs from the config in layers {sorted(set(wrong))} "
            f"(config: {dict(sorted((i, windows[i]) for i in set(wrong)))}, graph: "
            f"{ {s.layer: s.sliding_window for s in sites if s.layer in wrong} }); eager/sdpa "
            "attention loses the window with its mask: export with attn_implementation "
            "'autodeploy'"
        )
    cap = getattr(config, "attn_logit_softcapping", None)
    wrong = [s.layer for s in sites if s.logit_cap != cap]
    if wrong:
        problems.append(
            f"attention soft-capping differs from the config ({cap}) in layers {sorted(wrong)}"
        )
    num_kv = getattr(config, "num_key_value_heads", None)
    wrong = [s.layer for s in sites if num_kv and s.num_kv_heads and s.num_kv_heads != num_kv]
    if wrong:
        problems.append(f"kv heads differ from num_key_value_heads={num_kv} in layers {wrong}")
    return problems


def _expected_rope_layers(config: Any, attention_layers: list[int], has_rotary: bool) -> list[int]:
    uses_rope = has_rotary
    if config is not None:
        uses_rope = uses_rope or any(
            getattr(config, key, None) is not None
            for key in ("rope_theta", "rope_parameters", "rotary_dim", "partial_rotary_factor")
        )
        if getattr(config, "position_embedding_type", "rope") not in ("rope", "rotary"):
            uses_rope = False
    if not uses_rope:
        return []
    no_rope = getattr(config, "no_rope_layers", None) if config is not None else None
    if no_rope:  # SmolLM3: 1 = the layer uses RoPE
        return [i for i in attention_layers if i < len(no_rope) and no_rope[i]]
    return list(attention_layers)


def collect_coverage(gm: GraphModule, config: Any = None) -> Coverage:
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    sites = [_attention_site(n) for n in nodes if is_op(n, ATTENTION_OPS)]

    attention_modules: dict[int, str] = {}
    norm_modules: dict[str, str] = {}
    has_rotary, mlp_modules, mixer_layers = False, set(), set()
    for node in nodes:
        for path, cls in _module_stack(node):
            name = _class_name(cls)
            if ("Mamba" in name or name.endswith("Mixer")) and _layer_of(path) is not None:
                mixer_layers.add(_layer_of(path))
            if _ATTENTION_MODULE.search(name) and _layer_of(path) is not None:
                attention_modules.setdefault(_layer_of(path), path)
            elif "Norm" in name and "RMS" in name:
                norm_modules[path] = name
            elif "Rotary" in name:
                has_rotary = True
            elif name.endswith("MLP"):
                mlp_modules.add(path)

    expected = _expected_attention_layers(config, set(attention_modules))
    matched = {s.layer for s in sites}
    if all(layer is None for layer in matched) and sites:  # no module info: count only
        missing = expected[len(sites) :]
    else:
        missing = [layer for layer in expected if layer not in matched]
    hints = {layer: _attention_hint(nodes, attention_modules.get(layer)) for layer in missing}

    rope_nodes = [n for n in nodes if is_op(n, tuple(ROPE_OPS))]
    rope_counts = Counter(ROPE_OPS[n.target] for n in rope_nodes)
    rope_layers = {_layer_of((_innermost(n) or ("", ""))[0]) for n in rope_nodes}
    expected_rope = _expected_rope_layers(config, expected, has_rotary)
    missing_rope = [i for i in expected_rope if i not in rope_layers]
    if rope_layers == {None}:  # no module info: count only
        missing_rope = expected_rope[len(rope_nodes) :]

    norm_nodes = [n for n in nodes if is_op(n, tuple(NORM_OPS))]
    matched_norm_modules = {(_innermost(n) or ("", ""))[0] for n in norm_nodes}
    other_norms = Counter(
        str(n.target.overloadpacket.__name__)
        for n in nodes
        if is_op(n, (aten.layer_norm, aten.native_layer_norm, aten.group_norm))
    )
    return Coverage(
        model_type=getattr(config, "model_type", None),
        expected_attention_layers=expected,
        attention=sites,
        missing_attention_layers=missing,
        attention_hints={k: v for k, v in hints.items() if v},
        feature_mismatches=_feature_mismatches(config, sites),
        rope=dict(rope_counts),
        expected_rope_layers=expected_rope,
        missing_rope_layers=missing_rope,
        norms=dict(Counter(NORM_OPS[n.target] for n in norm_nodes)),
        unmatched_norm_modules=sorted(set(norm_modules) - matched_norm_modules),
        other_norms=dict(other_norms),
        mlp_modules=len(mlp_modules),
        fused_mlps=sum(is_op(n, ad.torch_swiglu_mlp.default) for n in nodes),
        modules=attention_modules,
        moe=collect_moe_coverage(
            nodes,
            config,
            {_layer_of(path) for path in mlp_modules},
            int(getattr(config, "num_hidden_layers", 0) or 0),
        ),
        ssm=collect_ssm_coverage(
            nodes, config, lambda n: _layer_of((_innermost(n) or ("", ""))[0]), mixer_layers
        ),
    )


def _attention_hint(nodes: list[Node], module: str | None) -> str:
    """Which matcher should have caught the attention of ``module``, judging by leftovers."""
    for node in nodes:
        stack_paths = [p for p, _ in _module_stack(node)]
        if module is not None and module not in stack_paths:
            continue
        for op, transform in _ATTENTION_HINTS:
            if is_op(node, op):
                return f"{transform} (found {op} in {module or 'the graph'})"
    return ""


def format_coverage(cov: Coverage) -> str:
    """A short human-readable report (also written into graph dumps)."""
    total = len(cov.expected_attention_layers)
    found = total - len(cov.missing_attention_layers)
    lines = [f"pattern coverage ({cov.model_type or 'unknown model'}):"]
    kinds = Counter(s.kind() for s in cov.attention)
    kind_text = "; ".join(f"{n}x {k}" for k, n in kinds.items()) or "none"
    lines.append(f"  attention: {found}/{total} layers -> torch_attention [{kind_text}]")
    for layer in cov.missing_attention_layers:
        hint = cov.attention_hints.get(layer, "")
        where = cov.modules.get(layer, "?")
        lines.append(f"    MISSING layer {layer} ({where}){': see ' + hint if hint else ''}")
    for problem in cov.feature_mismatches:
        lines.append(f"    MISMATCH {problem}")
    rope = ", ".join(f"{n}x {k}" for k, n in cov.rope.items()) or "none"
    expected_rope = len(cov.expected_rope_layers)
    lines.append(
        f"  rope: {expected_rope - len(cov.missing_rope_layers)}/{expected_rope} layers [{rope}]"
    )
    if cov.missing_rope_layers:
        lines.append(f"    MISSING rope in layers {cov.missing_rope_layers}")
    norms = ", ".join(f"{n}x {k}" for k, n in {**cov.norms, **cov.other_norms}.items()) or "none"
    lines.append(f"  norms: {norms}")
    for module in cov.unmatched_norm_modules:
        lines.append(f"    UNMATCHED {module}")
    lines.append(f"  mlp: {cov.mlp_modules} MLP modules, {cov.fused_mlps} fused (torch_swiglu_mlp)")
    lines.extend(format_moe_coverage(cov.moe))
    if cov.ssm.expected_layers or cov.ssm.ssm_layers:
        lines.append(cov.ssm.format())
    return "\n".join(lines)
