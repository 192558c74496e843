"""Op families and their backends: one registry keyed by (family, backend).

An **op family** is a set of ops with one meaning (``attention``, ``rms_norm``, ``rope``; later
``moe``, ``ssm``, ``causal_conv``). It is declared once with ``OpFamily(...)`` and
``register_family``: its name, the reference backend (the ``torch_*`` ops, which run anywhere)
and, for cached families, the calling convention of its cached op (``cached_op.py``).

A **backend** is a class of classmethods derived from ``OpBackend`` and registered with
``@BackendRegistry.register(family, name)``. It answers two questions, both importable and
callable without its optional package (triton, flashinfer) installed:

- ``unavailable(device) -> None | reason``: can it run on this device type in this process at
  all (package installed, CUDA present, Triton interpreter enabled on CPU)?
- ``supports(node) -> None | reason``: can it take this graph node (shapes, dtypes and features
  read from the node's fake tensors)?

and declares ``auto_priority``: ``{device_type: priority}`` where ``auto`` may pick it (higher
wins; ``"*"`` is any device type; where it is not listed, ``auto`` never picks it: only a
request by name does). The choice
itself is made in one place, ``backend_resolver.resolve_backend``.

Cached-op families use ``CachedOpDescriptor`` (``cached_op.py``), a subclass of ``OpBackend``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.fx import Node

from ..utils.errors import RegistryError
from ..utils.suggest import did_you_mean

AUTO = "auto"


@dataclass(frozen=True)
class OpFamily:
    """One op family, declared once (see the module docstring)."""

    name: str
    description: str
    reference: str = "torch"  # the backend that implements the specification
    # How to set the backend (shown in errors): e.g. "insert_cached_attention.backend".
    setting: str = ""
    # Cached families: the calling convention every backend's cached op follows.
    convention: Any = None


class OpBackend:
    """Base class of every backend of every op family (see the module docstring)."""

    family: ClassVar[str] = ""  # set by BackendRegistry.register
    backend_name: ClassVar[str] = ""  # set by BackendRegistry.register
    # Device types where ``auto`` may pick this backend, with its priority there (higher wins;
    # "*": any device type).
    auto_priority: ClassVar[dict[str, int]] = {}

    @classmethod
    def name(cls) -> str:
        return cls.backend_name or cls.__name__

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` in this process (None: it can)."""
        return None

    @classmethod
    def supports(cls, node: Node) -> str | None:
        """Why this backend cannot replace ``node`` (None: it can)."""
        return None


class _BackendRegistry:
    """(family, backend) -> backend class; families by name. Names are unique per family."""

    def __init__(self) -> None:
        self._families: dict[str, OpFamily] = {}
        self._backends: dict[str, dict[str, type[OpBackend]]] = {}
        self._origins: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ families

    def register_family(self, family: OpFamily) -> OpFamily:
        known = self._families.get(family.name)
        if known is not None and known != family:
            raise RegistryError(
                f"op family {family.name!r} is already declared; pick another name."
            )
        self._families[family.name] = family
        self._backends.setdefault(family.name, {})
        return family

    def family(self, name: str) -> OpFamily:
        try:
            return self._families[name]
        except KeyError:
            raise RegistryError(
                f"unknown op family {name!r}.{did_you_mean(name, self._families)} "
                f"Known: {', '.join(sorted(self._families)) or '(none)'}."
            ) from None

    def families(self) -> list[str]:
        return sorted(self._families)

    # ------------------------------------------------------------------ backends

    def register(self, family: str, name: str):
        """Class decorator: register an ``OpBackend`` subclass as ``name`` of ``family``."""
        self.family(family)

        def decorator(cls: type[OpBackend]) -> type[OpBackend]:
            if not (isinstance(cls, type) and issubclass(cls, OpBackend)):
                raise RegistryError(f"{family} backend {name!r}: {cls!r} is not an OpBackend.")
            table = self._backends[family]
            origin = getattr(cls, "__module__", "?")
            if name in table and table[name] is not cls:
                raise RegistryError(
                    f"{family} backend {name!r} is already registered by "
                    f"{self._origins[(family, name)]}; {origin} tries to register it again. "
                    "Pick another name."
                )
            cls.family, cls.backend_name = family, name
            table[name] = cls
            self._origins[(family, name)] = origin
            return cls

        return decorator

    def get(self, family: str, name: str) -> type[OpBackend]:
        table = self._backends.get(self.family(family).name, {})
        if name not in table:
            setting = self._families[family].setting
            hint = f" Set it with `{setting}`." if setting else ""
            raise RegistryError(
                f"Unknown {family} backend {name!r}.{did_you_mean(name, table)} "
                f"Known: {', '.join(sorted(table)) or '(none)'}.{hint}"
            )
        return table[name]

    def has(self, family: str, name: str) -> bool:
        return name in self._backends.get(family, {})

    def names(self, family: str) -> list[str]:
        return sorted(self._backends.get(family, {}))

    def backends(self, family: str) -> list[type[OpBackend]]:
        return [self._backends[family][n] for n in self.names(family)]

    def origin(self, family: str, name: str) -> str:
        self.get(family, name)
        return self._origins[(family, name)]


BackendRegistry = _BackendRegistry()


class FamilyRegistry:
    """The backends of one family as a name registry (``get``/``has``/``names``/``register``),
    e.g. ``AttentionRegistry``: what code that only deals with one family uses."""

    def __init__(self, family: str):
        self.family = family

    def register(self, name: str):
        return BackendRegistry.register(self.family, name)

    def get(self, name: str) -> Any:
        return BackendRegistry.get(self.family, name)

    def has(self, name: str) -> bool:
        return BackendRegistry.has(self.family, name)

    def names(self) -> list[str]:
        return BackendRegistry.names(self.family)

    def origin(self, name: str) -> str:
        return BackendRegistry.origin(self.family, name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has(name)

    def __iter__(self):
        return iter(self.names())


def check_backend_name(family: str, value: str) -> str:
    """Pydantic validator body for a ``backend`` setting: ``auto`` or a registered name."""
    if value != AUTO and not BackendRegistry.has(family, value):
        known = [AUTO, *BackendRegistry.names(family)]
        raise ValueError(
            f"unknown {family} backend {value!r}.{did_you_mean(value, known)} "
            f"Choices: {', '.join(known)} (a backend whose optional dependency is not "
            "installed may be missing)"
        )
    return value
