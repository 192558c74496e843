"""Export patches: context managers that make model code export-friendly while tracing.

A patch is a class with ``__enter__``/``__exit__`` registered under a name. All registered
patches apply by default; ``export_to_gm.patches`` limits them to a list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from ..utils.registry import Registry


class ExportPatch(contextlib.AbstractContextManager):
    """Override ``apply`` and ``revert``; ``revert`` runs even if tracing fails."""

    def apply(self) -> None:
        raise NotImplementedError

    def revert(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> ExportPatch:
        self.apply()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.revert()


ExportPatchRegistry: Registry[type[ExportPatch]] = Registry("export patch")


@contextlib.contextmanager
def apply_export_patches(names: Sequence[str] | None = None) -> Iterator[None]:
    """Apply the named patches (all registered ones when ``names`` is None)."""
    selected = ExportPatchRegistry.names() if names is None else list(names)
    patches = [ExportPatchRegistry.get(name)() for name in selected]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield
