"""spacesim.client.netem: the user-space UDP impairment relay and its SDP helpers."""

from __future__ import annotations

import asyncio
import re
import socket
import statistics
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import aioice.ice
import pytest
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from spacesim import rtc
from spacesim.client.netem import (
    DISCARD_ADDRESS,
    Impairment,
    UdpRelay,
    blackhole_candidates,
    candidate_addresses,
    relay_answer,
    rewrite_candidates,
)

Address = tuple[str, int]
_PING = struct.Struct("!Id")  # sequence number, send time (perf_counter)


# -- UDP helpers ---------------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.transport.sendto(data, addr)


@dataclass
class _Pinger(asyncio.DatagramProtocol):
    rtts: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        seq, sent = _PING.unpack(data)
        self.rtts.append(time.perf_counter() - sent)
        self.seqs.append(seq)


@pytest.fixture
async def echo() -> AsyncIterator[Address]:
    """Address of a UDP echo server on 127.0.0.1."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Echo, sock=_roomy_socket())
    host, port = transport.get_extra_info("sockname")[:2]
    yield (host, port)
    transport.close()


def _roomy_socket() -> socket.socket:
    """A bound UDP socket with a 1 MiB receive buffer: the relay forwards a backlog of
    datagrams in one go, which the default ~200 KB buffer may not hold."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    return sock


async def _ping(to: Address, count: int, gap: float, settle: float, batch: int = 1) -> _Pinger:
    """Send ``count`` pings (``batch`` at a time, ``gap`` s apart), wait ``settle`` s."""
    loop = asyncio.get_running_loop()
    sock = _roomy_socket()
    sock.connect(to)
    transport, pinger = await loop.create_datagram_endpoint(_Pinger, sock=sock)
    try:
        for seq in range(count):
            transport.sendto(_PING.pack(seq, time.perf_counter()))
            if (seq + 1) % batch == 0:
                await asyncio.sleep(gap)
        await asyncio.sleep(settle)
    finally:
        transport.close()
    return pinger


def _ms(seconds: float) -> float:
    return seconds * 1e3


# -- Impairment -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"delay": -0.001}, {"jitter": -1.0}, {"delay": float("nan")}, {"loss": 1.5}, {"loss": -0.1}],
)
def test_impairment_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Impairment(**kwargs)  # type: ignore[arg-type]


# -- UDP relay --------------------------------------------------------------------------


async def test_delay_30ms_each_way_gives_60ms_rtt(echo: Address) -> None:
    imp = Impairment(delay=0.030)
    async with await UdpRelay.start(echo, imp, imp) as relay:
        pinger = await _ping(relay.address, count=200, gap=0.003, settle=0.12)
        up, down = relay.up, relay.down
    assert len(pinger.rtts) == 200
    median = _ms(statistics.median(pinger.rtts))
    assert 58.0 <= median <= 62.0, median
    # Timers fire at most ~1 ms early (the lead) per hop, never much more.
    assert _ms(min(pinger.rtts)) >= 57.5
    assert (up.received, up.forwarded, up.dropped) == (200, 200, 0)
    assert (down.received, down.forwarded, down.dropped) == (200, 200, 0)
    assert pinger.seqs == list(range(200))


async def test_zero_impairment_adds_under_1ms(echo: Address) -> None:
    direct = await _ping(echo, count=200, gap=0.001, settle=0.02)
    async with await UdpRelay.start(echo, Impairment(), Impairment()) as relay:
        relayed = await _ping(relay.address, count=200, gap=0.001, settle=0.02)
    assert len(direct.rtts) == len(relayed.rtts) == 200
    added = statistics.median(relayed.rtts) - statistics.median(direct.rtts)
    assert _ms(added) < 1.0, _ms(added)


async def test_loss_20pct_each_way(echo: Address) -> None:
    n = 2000
    imp_up = Impairment(loss=0.2, seed=11)
    imp_down = Impairment(loss=0.2, seed=12)
    async with await UdpRelay.start(echo, imp_up, imp_down) as relay:
        pinger = await _ping(relay.address, count=n, gap=0.001, settle=0.05, batch=25)
        up, down = relay.up, relay.down
    assert up.received == n  # nothing lost in the kernel: all loss is the relay's
    assert up.forwarded + up.dropped == n
    assert down.received == up.forwarded
    assert down.forwarded + down.dropped == down.received
    assert len(pinger.rtts) == down.forwarded
    assert abs(up.forwarded / up.received - 0.8) <= 0.03
    assert abs(down.forwarded / down.received - 0.8) <= 0.03
    assert abs(len(pinger.rtts) / n - 0.64) <= 0.03


async def test_loss_is_reproducible_with_a_seed(echo: Address) -> None:
    async def delivered(seed: int) -> list[int]:
        async with await UdpRelay.start(echo, Impairment(loss=0.5, seed=seed)) as relay:
            return (await _ping(relay.address, count=200, gap=0.001, settle=0.02, batch=20)).seqs

    first, again, other = await delivered(7), await delivered(7), await delivered(8)
    assert first == again
    assert first != other
    assert 60 < len(first) < 140


async def test_jitter_spreads_rtt_and_keeps_order(echo: Address) -> None:
    plain = Impairment(delay=0.010)
    async with await UdpRelay.start(echo, plain, plain) as relay:
        steady = await _ping(relay.address, count=200, gap=0.003, settle=0.05)
    jitter_up = Impairment(delay=0.010, jitter=0.005, seed=1)
    jitter_down = Impairment(delay=0.010, jitter=0.005, seed=2)
    async with await UdpRelay.start(echo, jitter_up, jitter_down) as relay:
        jittery = await _ping(relay.address, count=200, gap=0.003, settle=0.15)
    assert len(steady.rtts) == len(jittery.rtts) == 200
    # Interquartile ranges: a busy machine's scheduling stalls are outliers, not spread.
    q_steady, q_jittery = (statistics.quantiles(p.rtts, n=4) for p in (steady, jittery))
    # (a loaded 2-core machine spread the steady IQR to 2.3 ms once; 2 x 5 ms of
    # exponential jitter spreads it by ~7 ms)
    iqr_steady, iqr_jittery = (_ms(q[2] - q[0]) for q in (q_steady, q_jittery))
    assert iqr_steady < 3.0
    assert iqr_jittery > max(3.0, 2 * iqr_steady)
    # Jitter only adds delay: nothing arrives sooner than 2 x delay (minus timer lead).
    assert _ms(min(jittery.rtts)) >= 18.0
    assert statistics.median(jittery.rtts) > statistics.median(steady.rtts) + 0.005
    assert jittery.seqs == list(range(200))  # order preserved in both directions


async def test_reorder_lets_jitter_reorder(echo: Address) -> None:
    imp = Impairment(delay=0.002, jitter=0.005, seed=3, reorder=True)
    async with await UdpRelay.start(echo, imp) as relay:
        pinger = await _ping(relay.address, count=100, gap=0.001, settle=0.1)
    assert sorted(pinger.seqs) == list(range(100))
    assert pinger.seqs != list(range(100))


async def test_upstream_socket_per_client_only_accepts_the_target(echo: Address) -> None:
    async with await UdpRelay.start(echo) as relay:
        first = await _ping(relay.address, count=3, gap=0.001, settle=0.01)
        second = await _ping(relay.address, count=3, gap=0.001, settle=0.01)
        assert len(first.rtts) == len(second.rtts) == 3
        clients = relay.clients
        assert len(clients) == 2
        assert len(set(clients.values())) == 2
        assert all(up[0] == "127.0.0.1" and up not in clients for up in clients.values())
        # A stranger writing to an upstream socket is not relayed to the client.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(b"spoof", next(iter(clients.values())))
        await asyncio.sleep(0.01)
        assert relay.down.received == 6
    assert relay.closed


async def test_close_counts_queued_datagrams_as_dropped(echo: Address) -> None:
    relay = await UdpRelay.start(echo, Impairment(delay=0.5))
    pinger = await _ping(relay.address, count=10, gap=0.0, settle=0.01, batch=10)
    assert relay.up.in_flight == 10
    await relay.close()
    await relay.close()  # idempotent
    up = relay.up
    assert (up.received, up.forwarded, up.dropped, up.in_flight) == (10, 0, 10, 0)
    assert pinger.rtts == []


async def test_max_clients_drops_further_clients(echo: Address) -> None:
    async with await UdpRelay.start(echo, max_clients=1) as relay:
        first = await _ping(relay.address, count=2, gap=0.001, settle=0.01)
        second = await _ping(relay.address, count=2, gap=0.001, settle=0.01)
        up = relay.up
    assert len(first.rtts) == 2
    assert second.rtts == []
    assert (up.received, up.forwarded, up.dropped) == (4, 2, 2)


# -- SDP --------------------------------------------------------------------------------

_CANDIDATE_LINE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host")


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """ICE host candidates on 127.0.0.1 only, restored afterwards."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    rtc.use_host_addresses(["127.0.0.1"])


async def _aiortc_offer() -> str:
    pc = rtc.new_peer_connection()
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


@pytest.mark.usefixtures("loopback_ice")
async def test_rewrite_candidates_on_an_aiortc_offer() -> None:
    sdp = await _aiortc_offer()
    [(host, port)] = candidate_addresses(sdp)
    assert host == "127.0.0.1"
    new = ("127.0.0.2", 40000)
    seen: list[Address] = []

    def mapping(addr: str, p: int) -> Address | None:
        seen.append((addr, p))
        return new if (addr, p) == (host, port) else None

    out = rewrite_candidates(sdp, mapping)
    before, after = sdp.splitlines(keepends=True), out.splitlines(keepends=True)
    assert len(before) == len(after)
    changed = {i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}
    for i in changed:
        line = after[i]
        assert line.endswith("\r\n")
        if line.startswith("a=candidate:"):
            match = _CANDIDATE_LINE.match(line)
            assert match is not None and (match[1], int(match[2])) == ("127.0.0.2", 40000)
            # Everything but the address and port is untouched.
            assert before[i].replace(f"{host} {port}", "127.0.0.2 40000") == line
        elif line.startswith("m="):
            assert before[i].replace(f" {port} ", " 40000 ", 1) == line
        else:
            assert line == "c=IN IP4 127.0.0.2\r\n"
            assert before[i] == f"c=IN IP4 {host}\r\n"
    kinds = sorted(after[i][:2] for i in changed)
    assert kinds == ["a=", "c=", "m="]
    assert candidate_addresses(out) == [new]
    assert (host, port) in seen
    # A mapping that keeps everything returns the SDP unchanged.
    assert rewrite_candidates(sdp, lambda a, p: None) == sdp


def test_rewrite_candidates_edge_cases() -> None:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        "m=audio 5000 UDP/TLS/RTP/SAVPF 111\r\n"
        "a=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\r\n"
        "a=candidate:2 1 udp 1694498815 1.2.3.4 6000 typ srflx raddr 10.0.0.1 rport 5000\r\n"
        "a=candidate:3 1 tcp 1518280447 10.0.0.1 9 typ host tcptype active\r\n"
        "m=audio 0 UDP/TLS/RTP/SAVPF 111\r\n"
        "a=bundle-only\r\n"
    )
    out = rewrite_candidates(sdp, lambda a, p: ("::1", 7000) if a == "10.0.0.1" else None)
    assert out == sdp.replace(
        "m=audio 5000 UDP/TLS/RTP/SAVPF 111\r\n",
        "m=audio 7000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP6 ::1\r\n",
    ).replace("10.0.0.1 5000 typ host", "::1 7000 typ host")
    assert candidate_addresses(sdp) == [("10.0.0.1", 5000)]
    assert candidate_addresses(sdp, types=("srflx",)) == [("1.2.3.4", 6000)]
    assert (
        blackhole_candidates(sdp).count(f"{DISCARD_ADDRESS[0]} {DISCARD_ADDRESS[1]} typ host") == 1
    )


# -- WebRTC through the relay -----------------------------------------------------------

Connect = Callable[
    [bool], Awaitable[tuple[RTCPeerConnection, RTCPeerConnection, RTCDataChannel, list[UdpRelay]]]
]


@pytest.fixture
async def connect(loopback_ice: None) -> AsyncIterator[Connect]:
    """connect(hide_offer) -> (offerer, answerer, channel, relays): the answer goes through
    ``relay_answer`` (20 ms each way); with hide_offer the offer goes through
    ``blackhole_candidates``. The answerer echoes data channel messages."""
    pcs: list[RTCPeerConnection] = []
    relays: list[UdpRelay] = []

    async def make(
        hide_offer: bool,
    ) -> tuple[RTCPeerConnection, RTCPeerConnection, RTCDataChannel, list[UdpRelay]]:
        client, server = rtc.new_peer_connection(), rtc.new_peer_connection()
        pcs.extend([client, server])

        @server.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            channel.on("message", channel.send)

        client.addTransceiver("audio")
        channel = client.createDataChannel("ping")
        await client.setLocalDescription(await client.createOffer())
        offer = client.localDescription.sdp
        if hide_offer:
            offer = blackhole_candidates(offer)
        await server.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await server.setLocalDescription(await server.createAnswer())
        imp = Impairment(delay=0.020)
        answer, started = await relay_answer(server.localDescription.sdp, imp, imp)
        relays.extend(started)
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        async with asyncio.timeout(10):
            while client.connectionState != "connected":
                assert client.connectionState not in ("failed", "closed")
                await asyncio.sleep(0.01)
        return client, server, channel, started

    yield make
    for pc in pcs:
        await pc.close()
    for relay in relays:
        await relay.close()


async def _channel_rtts(channel: RTCDataChannel, count: int) -> list[float]:
    if channel.readyState != "open":
        opened = asyncio.Event()
        channel.on("open", opened.set)
        async with asyncio.timeout(5):
            await opened.wait()
    replies: asyncio.Queue[float] = asyncio.Queue()
    channel.on("message", lambda _: replies.put_nowait(time.perf_counter()))
    rtts = []
    for _ in range(count):
        sent = time.perf_counter()
        channel.send("ping")
        async with asyncio.timeout(5):
            rtts.append(await replies.get() - sent)
    return rtts


async def test_webrtc_connects_through_relay(connect: Connect) -> None:
    client, _, channel, relays = await connect(True)
    assert client.connectionState == "connected"
    assert len(relays) == 1  # BUNDLE: one host candidate in the answer
    rtts = await _channel_rtts(channel, 5)
    # Every packet takes the relay: 2 x 20 ms plus SCTP/DTLS processing.
    assert 39.0 <= _ms(statistics.median(rtts)) <= 50.0, rtts
    relay = relays[0]
    assert relay.up.forwarded > 5 and relay.down.forwarded > 5
    assert len(relay.clients) == 1


async def test_webrtc_answer_only_connects_but_may_bypass_relay(connect: Connect) -> None:
    """Rewriting only the answer connects, but the server reaches the client's real
    candidate directly and aioice nominates that faster pair: media skips the relay
    (this pins the caveat in the module docstring)."""
    client, _, channel, relays = await connect(False)
    assert client.connectionState == "connected"
    rtts = await _channel_rtts(channel, 3)
    assert _ms(statistics.median(rtts)) < 20.0, rtts
    assert len(relays) == 1
