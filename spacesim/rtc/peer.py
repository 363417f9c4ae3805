"""Peer connections for loopback and LAN use: no STUN servers, chosen host addresses."""

from __future__ import annotations

from collections.abc import Iterable

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection

from spacesim.rtc import internals as _i

__all__ = ["DEFAULT_HOST_ADDRESSES", "new_peer_connection", "use_host_addresses"]

_i.register(
    __name__,
    _i.attr(aioice.ice, "get_host_addresses", "aioice/ice.py get_host_addresses"),
)

DEFAULT_HOST_ADDRESSES: tuple[str, ...] = ("127.0.0.1",)


def new_peer_connection() -> RTCPeerConnection:
    """A peer connection with no STUN/TURN servers (host candidates only)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def use_host_addresses(addrs: Iterable[str] = DEFAULT_HOST_ADDRESSES) -> None:
    """Gather ICE host candidates on exactly these IPv4/IPv6 addresses.

    Replaces ``aioice.ice.get_host_addresses`` (aioice/ice.py, called by
    ``Connection.gather_candidates``), which enumerates all adapters but skips
    127.0.0.1. Process-wide; call before creating peer connections.
    """
    chosen = list(addrs)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses
