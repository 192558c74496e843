"""Close-match suggestions for misspelled names."""

import difflib
from collections.abc import Iterable


def close_matches(name: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    """Return up to ``limit`` candidates that look like ``name`` (best first)."""
    pool = sorted(set(candidates))
    found = difflib.get_close_matches(name, pool, n=limit, cutoff=0.6)
    # Also catch substrings that difflib scores low ("rope" -> "match_rope_pattern").
    if not found:
        found = [c for c in pool if name and (name in c or c in name)][:limit]
    return found


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A ready-to-append hint such as " Did you mean 'x' or 'y'?" (empty when nothing is close)."""
    found = close_matches(name, candidates)
    if not found:
        return ""
    return " Did you mean " + " or ".join(repr(f) for f in found) + "?"
