"""spacesim.rtc.internals: the upgrade guard sees every internal the package touches."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import spacesim.rtc
import spacesim.rtc.native  # the server imports it (numba); spacesim.rtc does not
from spacesim import rtc
from spacesim.rtc import internals

PACKAGE = Path(spacesim.rtc.__file__).parent
MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "internals"))
_MANGLED = re.compile(r"^_[A-Za-z][A-Za-z0-9]*__[A-Za-z]\w*$")


def test_no_internal_is_missing() -> None:
    assert rtc.missing_internals() == []


def test_missing_internals_notices_a_removed_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    monkeypatch.delattr(RTCDtlsTransport, "_send_rtp")
    assert rtc.missing_internals() == ["aiortc/rtcdtlstransport.py RTCDtlsTransport._send_rtp"]
    with pytest.raises(rtc.MissingInternals, match=r"RTCDtlsTransport\._send_rtp"):
        internals.check()


class _Dtls:
    """A stand-in for an upgraded RTCDtlsTransport that renamed one counter."""

    def __init__(self) -> None:
        self.__tx_bytes = 0
        self.__tx_sent = 0  # was __tx_packets


class _Buffer:
    def add(self, packet: object) -> object:
        return packet.payload  # type: ignore[attr-defined]  # was ._data


def test_each_kind_of_check_detects_a_missing_internal() -> None:
    """Fake objects: an instance attribute gone from __init__, one the library no longer
    reads off our objects, and a method that no longer exists."""
    present = [
        internals.assigned(_Dtls, "_Dtls__tx_bytes", "tx_bytes"),
        internals.read(_Buffer, "payload", "payload"),
        internals.attr(_Buffer, "add", "add"),
    ]
    gone = [
        internals.assigned(_Dtls, "_Dtls__tx_packets", "RTCDtlsTransport.__tx_packets"),
        internals.read(_Buffer, "_data", "JitterBuffer reads packet._data"),
        internals.attr(_Buffer, "_remove_frame", "JitterBuffer._remove_frame"),
    ]
    assert internals.missing_internals(present) == []
    internals.check(present)
    assert internals.missing_internals(present + gone) == [i.where for i in gone]
    with pytest.raises(rtc.MissingInternals) as err:
        internals.check(present + gone)
    assert all(i.where in str(err.value) for i in gone)


def test_assigned_means_stored_not_just_read() -> None:
    """An attribute a class only reads (e.g. one it expects from a subclass) is not one
    its instances are known to have."""

    class Reader:
        def __init__(self) -> None:
            self.x = self.y

    assert internals.missing_internals([internals.assigned(Reader, "y", "y")]) == ["y"]
    assert internals.missing_internals([internals.read(Reader, "y", "y")]) == []


def _private_names_used(path: Path) -> set[str]:
    """Private attribute names a module of the package touches on objects not its own:
    ``obj._name`` accesses and mangled names in strings (``getattr(r, "_Cls__x")``),
    minus the names the module defines itself (on self, in __slots__, at top level).

    Conservative where a name is both: ``RtpWriter._send_rtp`` hides aiortc's
    ``_send_rtp`` from the scan (it is registered all the same)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    used: set[str] = set()
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if not node.attr.startswith("__"):
                used.add(node.attr)
            value = node.value
            if (
                isinstance(node.ctx, ast.Store)
                and isinstance(value, ast.Name)
                and value.id == "self"
            ):
                own.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _MANGLED.match(node.value):
                used.add(node.value)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            own |= {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
    for top in tree.body:  # module- and class-level definitions (not nested functions,
        # which may be named after the aiortc method they replace)
        for node in [top, *(top.body if isinstance(top, ast.ClassDef) else [])]:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
    return used - own


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_every_private_name_a_module_touches_is_registered_by_it(path: Path) -> None:
    """What would have caught ``_RTCDtlsTransport__tx_packets``: written by the send
    path, never checked (an upgrade renaming it would just make a new attribute)."""
    module = f"spacesim.rtc.{path.stem}"
    registered = {i.name for i in internals.registered(module)}
    assert _private_names_used(path) - registered == set()


def test_the_send_path_registers_the_transport_counters() -> None:
    names = {i.name for i in internals.registered("spacesim.rtc.writer")}
    assert {"_RTCDtlsTransport__tx_bytes", "_RTCDtlsTransport__tx_packets"} <= names


def test_registrations_name_their_module() -> None:
    modules = {i.module for i in internals.registered()}
    assert modules == {f"spacesim.rtc.{p.stem}" for p in MODULES}
