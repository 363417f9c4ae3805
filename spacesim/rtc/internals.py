"""The upgrade guard: every aiortc / aioice / asyncio / pylibsrtp internal `spacesim.rtc` uses.

Each module of the package registers, next to its imports, the private (or otherwise
undocumented) names it reads, writes or calls, with the source they come from. The
package checks all of them when it is imported (:func:`check`), so an aiortc upgrade
that renames one -- say ``RTCDtlsTransport.__tx_packets`` -- stops every process that
imports ``spacesim.rtc`` at once with the list of what is gone, instead of failing
silently (or, for an attribute we only increment, creating a new one nobody reads).

Three kinds of check, because Python only lets us look at classes, not instances:

* :func:`attr` -- ``hasattr(owner, name)``: methods, class attributes, module names.
* :func:`assigned` -- some method of ``owner`` (or of a base class) stores an
  attribute of that name (a ``STORE_ATTR`` in its bytecode; name mangling happens at
  compile time, so a mangled name is there as ``_Class__name``): instance attributes.
* :func:`read` -- some method of ``owner`` loads an attribute of that name: one the
  library reads off an object we build ourselves (e.g. the ``_data`` aiortc's
  ``JitterBuffer`` joins).
"""

from __future__ import annotations

import dis
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "Internal",
    "MissingInternals",
    "assigned",
    "attr",
    "check",
    "missing_internals",
    "read",
    "register",
    "registered",
]


@dataclass(frozen=True)
class Internal:
    """One internal name: on what, which kind of check, and where it comes from."""

    owner: object
    name: str
    where: str
    kind: str = "attr"  # "attr" | "assigned" | "read"
    module: str = ""  # the spacesim.rtc module that uses it (set by `register`)

    def present(self) -> bool:
        """Whether the installed library still has it."""
        if self.kind == "attr":
            return hasattr(self.owner, self.name)
        ops = _STORES if self.kind == "assigned" else _LOADS if self.kind == "read" else None
        if ops is None:
            raise ValueError(f"unknown kind {self.kind!r}")
        return any(
            ins.opname in ops and ins.argval == self.name
            for code in _codes(self.owner)
            if self.name in code.co_names
            for ins in dis.get_instructions(code)
        )


_STORES = frozenset({"STORE_ATTR"})
_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})


def _codes(owner: object) -> Iterator[types.CodeType]:
    """The code objects of the functions defined on a class and its bases, nested ones
    (comprehensions, closures) included."""
    todo: list[types.CodeType] = []
    for cls in getattr(owner, "__mro__", (owner,)):
        if cls is object:
            continue
        for value in vars(cls).values():
            if isinstance(value, property):
                value = value.fget
            elif isinstance(value, staticmethod | classmethod):
                value = value.__func__
            code = getattr(value, "__code__", None)
            if isinstance(code, types.CodeType):
                todo.append(code)
    while todo:
        code = todo.pop()
        yield code
        todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))


def attr(owner: object, name: str, where: str) -> Internal:
    """A method, class attribute or module-level name: ``hasattr(owner, name)``."""
    return Internal(owner, name, where, "attr")


def assigned(cls: type, name: str, where: str) -> Internal:
    """An instance attribute that ``cls.__init__`` sets (use the mangled name)."""
    return Internal(cls, name, where, "assigned")


def read(cls: type, name: str, where: str) -> Internal:
    """An attribute that a method of ``cls`` reads off an object we hand it."""
    return Internal(cls, name, where, "read")


_REGISTRY: list[Internal] = []


def register(module: str, *internals: Internal) -> None:
    """Record the internals ``module`` (its ``__name__``) relies on."""
    _REGISTRY.extend(Internal(i.owner, i.name, i.where, i.kind, module) for i in internals)


def registered(module: str | None = None) -> list[Internal]:
    """Everything registered (by one module, or by all)."""
    return [i for i in _REGISTRY if module is None or i.module == module]


def missing_internals(internals: Iterable[Internal] | None = None) -> list[str]:
    """Where each missing internal came from ([] = all there); all registered by default."""
    return [i.where for i in (_REGISTRY if internals is None else internals) if not i.present()]


class MissingInternals(ImportError):
    """The installed aiortc / aioice lacks internals spacesim.rtc relies on."""


def check(internals: Iterable[Internal] | None = None) -> None:
    """Raise `MissingInternals` naming every missing internal (all registered by default)."""
    missing = missing_internals(internals)
    if missing:
        raise MissingInternals(
            "spacesim.rtc relies on aiortc/aioice internals the installed versions lack "
            "(an upgrade? see spacesim/rtc/internals.py): " + "; ".join(missing)
        )
