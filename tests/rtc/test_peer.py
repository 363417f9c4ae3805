"""spacesim.rtc.peer: host addresses."""

from __future__ import annotations

import aioice.ice

from spacesim import rtc


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
