"""Pattern utility: find a subgraph written as a Python function and replace it by another.

Every matcher is a handful of lines on top of this::

    def search(x, weight, eps):              # what HF writes
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return weight * x32.to(x.dtype)

    def replace(x, weight, eps):             # what we want instead
        return torch.ops.auto_deploy.torch_rmsnorm.default(x, weight, eps)

    patterns = PatternSet()
    patterns.add(search, replace, examples=[(x_f32, w_f32, 1e-6), (x_bf16, w_bf16, 1e-6), ...])
    num_matches = patterns.apply(gm)

How it works:

- **Tracing.** ``search`` is traced into the IR of non-strict ``torch.export`` (pre-dispatch
  ``make_fx``, what export runs underneath) once per example, so a dtype that adds or drops
  casts gives its own variant. Traces with the same structure are merged: a literal that
  differs between them (a head dim, a view shape) came from the example shapes and matches
  anything; a literal that is the same in all of them must match exactly (dims are compared
  counted from the end, so -1 and 3 agree on a 4-D tensor).
- **Scalars.** Float arguments of ``search`` are replaced by sentinels while tracing; where a
  sentinel shows up in the graph, the matched graph's literal is captured and handed to
  ``replace`` under that argument's name (eps, scale, soft-cap). Ints, bools and strings in the
  examples are traced as they are; one that has the same value in every example of a variant
  is handed to ``replace`` too, one that varies (e.g. ``n_rep``) must come from ``check``.
- **Noise.** ``torch.export`` leaves value-preserving nodes around; they are skipped on both
  sides: ``_assert_*`` checks, same-dtype ``to``/``_to_copy``, ``alias``, ``detach``,
  ``contiguous``/``clone``, dropout at inference, ``slice(x, d, 0, INT64_MAX)``, and
  view/reshape/expand to the same shape. ``view``, ``reshape`` and ``_unsafe_view`` are one op;
  ``add`` and ``mul`` match with their operands in either order.
- **Replacement.** ``replace`` is called with ``torch.fx.Proxy`` objects for the matched inputs,
  so it must call op overloads (``torch.ops.aten.transpose.int``, ``torch.ops.auto_deploy.*``),
  not tensor methods. The new nodes get fake-tensor metadata; a replacement whose output shape
  or dtype differs from the matched node is undone, and the site is left alone.
- ``check(match)`` (optional) sees each match before it is replaced; it returns ``None`` to
  reject it, or a dict of extra keyword arguments for ``replace``.

Node-level helpers for matchers that rewrite single ops (``bound_args``,
``insert_replacement``) live here too.
"""

from .match import Match, PatternSet, match_at, replace_match
from .nodes import (
    INT64_MAX,
    bound_args,
    erase_dead,
    insert_replacement,
    noise_input,
    propagate_meta,
    strip_noise,
    target_key,
)
from .trace import PatternGraph, trace_pattern

__all__ = [
    "INT64_MAX",
    "Match",
    "PatternGraph",
    "PatternSet",
    "bound_args",
    "erase_dead",
    "insert_replacement",
    "match_at",
    "noise_input",
    "propagate_meta",
    "replace_match",
    "strip_noise",
    "target_key",
    "trace_pattern",
]
