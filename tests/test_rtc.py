"""spacesim.rtc: the aiortc internals it relies on exist in the installed aiortc."""

from __future__ import annotations

import aioice.ice
import pytest

from spacesim import rtc


def test_no_internal_is_missing() -> None:
    assert rtc.missing_internals() == []


def test_use_host_addresses_replaces_aioice_lookup() -> None:
    saved = aioice.ice.get_host_addresses
    try:
        rtc.use_host_addresses(["127.0.0.1", "::1"])
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == [
            "127.0.0.1",
            "::1",
        ]
    finally:
        aioice.ice.get_host_addresses = saved


def test_missing_internals_notices_a_removed_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    monkeypatch.delattr(RTCDtlsTransport, "_send_rtp")
    assert rtc.missing_internals() == ["aiortc/rtcdtlstransport.py RTCDtlsTransport._send_rtp"]
