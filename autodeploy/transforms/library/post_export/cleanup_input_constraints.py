"""cleanup_input_constraints: drop upper bounds export put on the input dimensions."""

from __future__ import annotations

import sympy
from torch.utils._sympy.numbers import int_oo
from torch.utils._sympy.value_ranges import ValueRanges

from ...base import BaseTransform
from ...facts import EXPORTED_GRAPH
from ...graph_utils import fake_mode_of, placeholders
from ...interface import SharedConfig, Stages, TransformInfo
from ...registry import TransformRegistry


@TransformRegistry.register("cleanup_input_constraints")
class CleanupInputConstraints(BaseTransform):
    """Widen the recorded ranges of symbolic input dims to no upper bound.

    At run time the graph sees flattened batches (``[1, total_tokens]``) longer than any example;
    a bound recorded at export (e.g. from a named ``Dim`` with ``max``) must not make later shape
    propagation or range checks reject them. Both the graph's ``range_constraints`` and the
    shape environment are widened. With ``Dim.DYNAMIC`` inputs there is usually nothing to do.

    before: input ``s1`` in ``[2, 4096]``
    after:  input ``s1`` in ``[2, oo)``
    """

    stage = Stages.POST_EXPORT
    requires = (EXPORTED_GRAPH,)

    def _apply(self, gm, cm, factory, shared_config: SharedConfig):
        shape_env = fake_mode_of(gm).shape_env
        widened = 0
        if shape_env is not None:
            for node in placeholders(gm):
                val = node.meta.get("val")
                for size in getattr(val, "shape", ()):
                    expr = getattr(getattr(size, "node", None), "expr", None)
                    if not isinstance(expr, sympy.Symbol):
                        continue
                    bounds = shape_env.var_to_range.get(expr)
                    if bounds is not None and bounds.upper is not int_oo:
                        shape_env.var_to_range[expr] = ValueRanges(bounds.lower, int_oo)
                        widened += 1
        ranges = getattr(gm, "range_constraints", None)
        if isinstance(ranges, dict):
            for symbol, bounds in list(ranges.items()):
                if bounds.upper is not int_oo:
                    ranges[symbol] = ValueRanges(bounds.lower, int_oo)
        return gm, TransformInfo(
            skipped=widened == 0, num_matches=widened, is_clean=True, has_valid_shapes=True
        )
