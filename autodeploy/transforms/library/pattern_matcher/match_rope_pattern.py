"""match_rope_pattern: rotary position embeddings become ``torch_rope_*`` ops."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from ...facts import CANONICAL_ROPE
from ...graph_utils import is_op
from ...pattern import (
    Match,
    PatternSet,
    bound_args,
    erase_dead,
    insert_replacement,
    strip_noise,
    target_key,
)
from ...registry import TransformRegistry
from ._common import PatternMatcherTransform, ad, aten, example_configs, info_for


def _rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _hf_rope(x, cos, sin, unsqueeze_dim):
    """HF ``apply_rotary_pos_emb`` for one tensor (Llama, Mistral, Qwen, Phi, GPT-NeoX, ...)."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (x * cos) + (_rotate_half(x) * sin)


def _glm_rope(x, cos, sin, unsqueeze_dim):
    """GLM: rotation of interleaved pairs, cos/sin repeated per pair."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    cos = cos[..., : cos.shape[-1] // 2].repeat_interleave(2, dim=-1)
    sin = sin[..., : sin.shape[-1] // 2].repeat_interleave(2, dim=-1)
    rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return (x * cos) + (rotated * sin)


def _deepseek_rope(x, cos, sin, unsqueeze_dim):
    """DeepSeek: de-interleave the pairs, then rotate-half RoPE."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    a, b, c, d = x.shape
    x = x.view(a, b, c, d // 2, 2).transpose(4, 3).reshape(a, b, c, d)
    return (x * cos) + (_rotate_half(x) * sin)


def _examples(unsqueeze_dim: int) -> list[tuple]:
    out = []
    shapes = ((2, 4, 3, 8), (3, 5, 6, 16))  # [b, n, s, d]
    for dtype, i in example_configs():
        b, n, s, d = shapes[i]
        x = torch.randn(b, n, s, d, dtype=dtype)
        if unsqueeze_dim == 2:
            x = x.transpose(1, 2).contiguous()
        cos, sin = torch.randn(b, s, d, dtype=dtype), torch.randn(b, s, d, dtype=dtype)
        out.append((x, cos, sin, unsqueeze_dim))
    return out


@dataclass
class _Site:
    """One rotated tensor: ``output`` computes RoPE of ``source`` (the full head if partial)."""

    kind: str
    match: Match
    source: Node
    output: Node
    extra_nodes: list[Node]

    @property
    def key(self) -> tuple:
        m = self.match
        return (self.kind, m.inputs["cos"], m.inputs["sin"], m.scalars["unsqueeze_dim"])


def _last_dim_slice(node: Node) -> dict | None:
    """The arguments of ``node`` if it is a step-1 slice of the last dim."""
    if not is_op(node, aten.slice.Tensor):
        return None
    args = bound_args(node)
    rank = node.meta["val"].dim()
    return args if args["dim"] % rank == rank - 1 and args["step"] == 1 else None


def _partial_rotary(site: _Site) -> None:
    """Absorb ``cat([rope(x[..., :r]), x[..., r:]], -1)`` so the op sees the whole head.

    Also when ``r`` is the whole head (``x[..., :r]`` is then a no-op and ``x[..., r:]`` empty).
    """
    x = site.match.inputs["x"]
    head = _last_dim_slice(x)
    if head is not None and head["start"] in (0, None):
        full, width, absorbed = strip_noise(head["self"]), head["end"], [x]
    else:
        full, width, absorbed = x, x.meta["val"].shape[-1], []
    if len(site.output.users) != 1:
        return
    cat = next(iter(site.output.users))
    if not is_op(cat, aten.cat.default):
        return
    tensors, cat_dim = bound_args(cat)["tensors"], bound_args(cat)["dim"]
    rank = cat.meta["val"].dim()
    if cat_dim % rank != rank - 1 or len(tensors) != 2 or tensors[0] is not site.output:
        return
    rest = _last_dim_slice(strip_noise(tensors[1]))
    if rest is None or strip_noise(rest["self"]) is not full or rest["start"] != width:
        return
    site.extra_nodes = [*site.extra_nodes, *absorbed, strip_noise(tensors[1]), site.output]
    site.source, site.output = full, cat


_TRANSPARENT = {
    aten.transpose.int,
    aten.view.default,
    aten.reshape.default,
    aten.cat.default,
    aten.contiguous.default,
    aten.clone.default,
    aten.to.dtype,
    aten.expand.default,
    aten.unsqueeze.default,
    aten._to_copy.default,
}


def _attention_role(node: Node) -> tuple[Node, int] | None:
    """The attention op ``node`` feeds (through layout ops) and as which argument (0 q, 1 k)."""
    frontier, seen = [node], {node}
    for _ in range(8):
        following = []
        for current in frontier:
            for user in current.users:
                if is_op(user, ad.torch_attention.default):
                    for index in (0, 1):
                        if user.args[index] is current:
                            return user, index
                elif is_op(user, _TRANSPARENT) or is_op(user, ad.torch_attention_repeat_kv):
                    if user not in seen:
                        seen.add(user)
                        following.append(user)
        frontier = following
    return None


def _pair_sites(sites: list[_Site]) -> list[tuple[_Site, _Site | None]]:
    """(q, k) pairs: by the attention op they feed, else neighbours in graph order."""
    pairs: list[tuple[_Site, _Site | None]] = []
    by_attention: dict[Node, dict[int, _Site]] = defaultdict(dict)
    for site in sites:
        role = _attention_role(site.output)
        if role is not None:
            by_attention[role[0]][role[1]] = site
    paired: set[int] = set()
    for roles in by_attention.values():
        q, k = roles.get(0), roles.get(1)
        if q is not None and k is not None and q.key == k.key:
            pairs.append((q, k))
            paired.update((id(q), id(k)))
    rest: dict[tuple, list[_Site]] = defaultdict(list)
    for site in sites:
        if id(site) not in paired:
            rest[site.key].append(site)
    for group in rest.values():
        while len(group) >= 2:
            pairs.append((group.pop(0), group.pop(0)))
        if group:
            pairs.append((group.pop(), None))
    return pairs


def _rope_call(kind: str):
    if kind == "glm":

        def call(q, k, cos, sin, unsqueeze_dim, half):
            cos = aten.to.dtype(aten.slice.Tensor(cos, -1, 0, half), torch.float32)
            sin = aten.to.dtype(aten.slice.Tensor(sin, -1, 0, half), torch.float32)
            freqs = aten.complex.default(cos, sin)  # [b, s, r / 2], cos + i sin per pair
            out = ad.torch_rope_with_complex_freqs.default(q, k, freqs, unsqueeze_dim)
            return out[0], out[1]
    else:
        op = {
            "hf": ad.torch_rope_with_explicit_cos_sin,
            "deepseek": ad.torch_rope_with_qk_interleaving,
        }[kind]

        def call(q, k, cos, sin, unsqueeze_dim, half):
            out = op.default(q, k, cos, sin, unsqueeze_dim)
            return out[0], out[1]

    return call


def _insertion_point(outputs: list[Node], inputs: list[Node], order: dict[Node, int]):
    """Where the op can go: before the first output if all inputs exist there, else before the
    last output if nothing uses the others before it."""
    first, last = min(outputs, key=order.get), max(outputs, key=order.get)
    if all(order[i] < order[first] for i in inputs):
        return first
    if all(order[u] > order[last] for o in outputs if o is not last for u in o.users):
        return last
    return None


def _replace_pair(gm: GraphModule, q: _Site, k: _Site | None, order: dict[Node, int]) -> bool:
    sites = [q] if k is None else [q, k]
    m = q.match
    cos, sin, ud = m.inputs["cos"], m.inputs["sin"], m.scalars["unsqueeze_dim"]
    width = cos.meta["val"].shape[-1]
    inputs = [s.source for s in sites] + [cos, sin]
    anchor = _insertion_point([s.output for s in sites], inputs, order)
    if anchor is None:
        return False
    k_source = k.source if k is not None else q.source
    new = insert_replacement(
        gm, anchor, _rope_call(q.kind), q.source, k_source, cos, sin, ud, width // 2
    )
    for site, out in zip(sites, new):
        site.output.replace_all_uses_with(out)
    for site in sites:
        erase_dead(gm.graph, [*site.match.nodes, *site.extra_nodes])
    return True


def _dtype_preserving_site(kind: str, match: Match) -> _Site | None:
    """The ops return q/k's dtype. A site that promotes (float32 cos on bf16 q) qualifies when
    its result is cast straight back (OLMo-2 ``q_embed.to(q_type)``): the cast is absorbed."""
    source, output = match.inputs["x"], match.anchor
    dtype = source.meta["val"].dtype
    if output.meta["val"].dtype == dtype:
        return _Site(kind, match, source, output, [])
    users = list(output.users)
    if len(users) == 1 and target_key(users[0].target) == "cast":
        if users[0].meta["val"].dtype == dtype:
            return _Site(kind, match, source, users[0], [output])
    return None


@TransformRegistry.register("match_rope_pattern")
class MatchRopePattern(PatternMatcherTransform):
    """RoPE written out in aten ops becomes one op per (query, key) pair.

    before: ``q2 = q * cos.unsqueeze(1) + cat(-q[..., d/2:], q[..., :d/2]) * sin.unsqueeze(1)``
            (and the same for k)
    after:  ``q2, k2 = auto_deploy.torch_rope_with_explicit_cos_sin(q, k, cos, sin, 1)``
    Also: GLM's interleaved pairs -> ``torch_rope_with_complex_freqs`` (frequencies built from
    cos/sin); DeepSeek's de-interleaving -> ``torch_rope_with_qk_interleaving``. Partial rotary
    (``cat([rope(x[..., :r]), x[..., r:]])``) is absorbed: the op gets the whole head. q and k
    are paired by the attention op they feed (else by graph order); a lone rotated tensor gets
    the op with itself as both inputs.
    """

    provides = (CANONICAL_ROPE,)

    @classmethod
    def build_patterns(cls) -> PatternSet:
        patterns = PatternSet()
        for kind, fn, needs in (
            ("glm", _glm_rope, (aten.stack,)),
            ("deepseek", _deepseek_rope, (aten.cat,)),
            ("hf", _hf_rope, (aten.cat, aten.neg)),
        ):
            for unsqueeze_dim in (1, 2):
                patterns.add(
                    fn, None, _examples(unsqueeze_dim), name=kind, requires=(*needs, aten.unsqueeze)
                )
        return patterns

    def _apply(self, gm, cm, factory, shared_config):
        sites: list[_Site] = []
        claimed: set[Node] = set()
        for entry, match in self.patterns().find(gm):
            if match.anchor in claimed:
                continue  # earlier (more specific) entries win
            claimed.add(match.anchor)
            site = _dtype_preserving_site(entry.name, match)
            if site is not None:
                sites.append(site)
        for site in sites:
            _partial_rotary(site)
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        count = 0
        for q, k in _pair_sites(sites):
            count += _replace_pair(gm, q, k, order)
        return gm, info_for(count)
