"""One registry type for every pluggable kind (transforms, attention/compile backends, factories).

Names are unique: registering a name twice is an error, so a plugin cannot silently replace a
built-in. Looking up an unknown name raises an error that lists close matches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import RegistryError
from .suggest import did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table filled by the ``register`` decorator."""

    def __init__(self, kind: str, lookup_hint: str = ""):
        self.kind = kind
        self.lookup_hint = lookup_hint  # e.g. "run `python -m autodeploy.tools.list_transforms`"
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            origin = getattr(obj, "__module__", "?")
            if name in self._entries and self._entries[name] is not obj:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered by {self._origins[name]}; "
                    f"{origin} tries to register it again. Pick another name."
                )
            self._entries[name] = obj
            self._origins[name] = origin
            self._on_register(name, obj)
            return obj

        return decorator

    def _on_register(self, name: str, obj: T) -> None:
        """Hook for subclasses (e.g. to stamp the name onto the class)."""

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            hint = f" {self.lookup_hint}." if self.lookup_hint else ""
            raise RegistryError(
                f"Unknown {self.kind} {name!r}.{did_you_mean(name, self._entries)} "
                f"Known: {known}.{hint}"
            ) from None

    def has(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def origin(self, name: str) -> str:
        """Module that registered ``name`` (for listings and error messages)."""
        self.get(name)
        return self._origins[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
