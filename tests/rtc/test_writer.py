"""spacesim.rtc.writer: the direct send path and the room's sender reports, on real UDP sockets.

The writer's transport is a stand-in for aiortc's DTLS transport (state, SRTP session,
ICE connection with a nominated pair) whose pair is a real aioice ``StunProtocol`` on a
real asyncio datagram endpoint: what goes out is read off a plain socket on 127.0.0.1
and SRTP-unprotected with the same keys.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aioice.candidate
import aioice.ice
import pylibsrtp
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import State
from aiortc.rtp import RtcpPacket, RtcpSdesPacket, RtcpSenderInfo, RtcpSrPacket, RtpPacket
from pyee.asyncio import AsyncIOEventEmitter

from spacesim import rtc
from spacesim.rtc import writer as writer_mod

pytestmark = pytest.mark.timeout(10)

KEY = os.urandom(30)  # AES_CM_128_HMAC_SHA1_80: 16-byte key + 14-byte salt
PT = 111


def _session(direction: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=KEY, ssrc_type=direction, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    )
    return pylibsrtp.Session(policy)


class Link:
    """A writer-side UDP endpoint (aioice's protocol) and a plain receiving socket."""

    def __init__(self, protocol: aioice.ice.StunProtocol, rx: socket.socket) -> None:
        self.protocol = protocol
        self.rx = rx
        host, port = rx.getsockname()
        remote = aioice.candidate.Candidate("1", 1, "udp", 1, host, port, "host")
        self.pair = aioice.ice.CandidatePair(protocol, remote)
        # what RtpWriter reads of aiortc's RTCDtlsTransport (aiortc/rtcdtlstransport.py),
        # an event emitter like it ("statechange")
        self.dtls: Any = AsyncIOEventEmitter()
        self.dtls._state = State.CONNECTED
        self.dtls._tx_srtp = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self.dtls.transport = SimpleNamespace(
            _connection=SimpleNamespace(_nominated={1: self.pair})
        )
        self.dtls._RTCDtlsTransport__tx_bytes = 0
        self.dtls._RTCDtlsTransport__tx_packets = 0
        self.via_aiortc: list[bytes] = []  # what went through RTCDtlsTransport._send_rtp

        async def _send_rtp(data: bytes) -> None:
            self.via_aiortc.append(data)

        self.dtls._send_rtp = _send_rtp
        self.unprotect = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)

    async def received(self, n: int) -> list[bytes]:
        """The next n datagrams, SRTP(CP)-unprotected."""
        loop = asyncio.get_running_loop()
        out = []
        for _ in range(n):
            data = await asyncio.wait_for(loop.sock_recv(self.rx, 2048), 5)
            if 191 < data[1] < 209:
                out.append(self.unprotect.unprotect_rtcp(data))
            else:
                out.append(self.unprotect.unprotect(data))
        return out


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    loop = asyncio.get_running_loop()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: aioice.ice.StunProtocol(None),  # type: ignore[arg-type]
        local_addr=("127.0.0.1", 0),
    )
    yield Link(protocol, rx)
    transport.close()
    rx.close()


@pytest.fixture
async def pc() -> AsyncIterator[RTCPeerConnection]:
    pc = rtc.new_peer_connection()
    yield pc
    await pc.close()


def _writer(pc: RTCPeerConnection, link: Link, reports: Any = None) -> rtc.RtpWriter:
    w = rtc.RtpWriter(pc.addTransceiver("audio"))
    if reports is not None:
        reports.take_over(w)
    w.payload_type = PT  # what bind() reads off the negotiated codecs
    w._dtls = link.dtls
    return w


def _expected(w: rtc.RtpWriter, seq: int, ts: int, marker: int, payload: bytes) -> bytes:
    p = RtpPacket(payload_type=PT, marker=marker, sequence_number=seq, timestamp=ts, ssrc=w.ssrc)
    p.payload = payload
    return p.serialize()


async def test_direct_send_decrypts_to_the_packet_the_bytes_path_sends(
    pc: RTCPeerConnection, link: Link
) -> None:
    w = _writer(pc, link)
    payloads = [bytes([i]) * (20 + i) for i in range(4)]
    for i, payload in enumerate(payloads[:2]):
        assert w.send_now(1000 + i, 960 * i, i == 0, payload, 7)
    assert w._d is not None  # the direct path was taken
    w.direct = False
    w._d = None
    for i, payload in enumerate(payloads[2:], 2):  # the earlier path, same stream
        assert w.send_now(1000 + i, 960 * i, 0, payload, 7)
    assert w._d is None
    got = await link.received(4)
    assert got == [_expected(w, 1000 + i, 960 * i, int(i == 0), p) for i, p in enumerate(payloads)]
    sender = w._sender
    assert sender._RTCRtpSender__packet_count == 4  # type: ignore[attr-defined]
    assert sender._RTCRtpSender__octet_count == sum(map(len, payloads))  # type: ignore[attr-defined]
    assert sender._RTCRtpSender__ntp_timestamp == 7  # type: ignore[attr-defined]
    assert link.dtls._RTCDtlsTransport__tx_packets == 4
    assert link.dtls._RTCDtlsTransport__tx_bytes == sum(len(p) + 12 + 10 for p in payloads)


async def test_direct_send_keeps_order_behind_what_asyncio_has_queued(
    pc: RTCPeerConnection, link: Link
) -> None:
    """With datagrams queued in the asyncio transport (socket was full), a packet goes
    through the transport too, behind them; and not at all once the DTLS transport is
    no longer connected."""
    w = _writer(pc, link)
    assert w.send_now(1, 0, 0, b"a", 0)
    transport: Any = link.protocol.transport
    transport._buffer.append((b"queued", link.pair.remote_addr))  # as _sendto_ready would see
    assert w.send_now(2, 960, 0, b"b", 0)
    first, _second = transport._buffer  # behind what was queued, not before it
    assert first[0] == b"queued"
    transport._buffer.clear()
    link.dtls._state = State.CLOSED
    assert not w.send_now(3, 1920, 0, b"c", 0)  # the caller then awaits write(), which raises
    assert await link.received(1) == [_expected(w, 1, 0, 0, b"a")]


async def test_sender_reports_one_compound_packet_per_connection(
    pc: RTCPeerConnection, link: Link
) -> None:
    reports = rtc.SenderReports(tick=0.01)
    writers = [_writer(pc, link, reports) for _ in range(3)]
    for w in writers:  # what RTCRtpSender.send sets (aiortc/rtcrtpsender.py)
        w._sender._RTCRtpSender__cname = "cname-x"  # type: ignore[attr-defined]
    assert writers[1].send_now(5, 4800, 0, b"xyz", 1 << 40)
    assert writers[1].send_now(6, 5760, 0, b"uvwxy", 1 << 41)  # managed: counted here
    sender: Any = writers[1]._sender
    assert sender._RTCRtpSender__packet_count == 1  # ... and handed over at the report
    reports.add(writers)
    got = await link.received(3)  # the RTP packets, then the first report (0.5-1.5 s)
    reports.discard(writers)
    assert reports.sent == 1 and reports._timer is None
    assert sender._RTCRtpSender__packet_count == 2
    assert link.dtls._RTCDtlsTransport__tx_packets == 3  # 2 RTP + 1 RTCP
    packets = RtcpPacket.parse(got[2])
    srs = [p for p in packets if isinstance(p, RtcpSrPacket)]
    assert [p.ssrc for p in srs] == [w.ssrc for w in writers]
    assert bytes(srs[1]) == bytes(
        RtcpSrPacket(
            ssrc=writers[1].ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=1 << 41, rtp_timestamp=5760, packet_count=2, octet_count=8
            ),
        )
    )
    (sdes,) = [p for p in packets if isinstance(p, RtcpSdesPacket)]
    assert [(c.ssrc, c.items) for c in sdes.chunks] == [
        (w.ssrc, [(1, b"cname-x")]) for w in writers
    ]
    # the RTT estimate from receiver reports needs the last SR's middle 32 bits
    assert sender._RTCRtpSender__lsr == (1 << 41) >> 16


async def test_reports_on_a_silent_connection_look_its_path_up_once(
    pc: RTCPeerConnection, link: Link
) -> None:
    """A connection whose writers have sent nothing yet (listeners waiting for the first
    speaker) is reported on through one direct path: each lookup adds a "statechange"
    handler to the DTLS transport for its life, so one per report grew without bound
    (and cost the idle server a third of its CPU)."""
    reports = rtc.SenderReports()
    w = _writer(pc, link, reports)
    group = writer_mod._Group([w], 0.0)
    before = len(link.dtls.listeners("statechange"))
    for _ in range(5):
        reports._report(group)
    assert reports.sent == 5 and w._d is None
    assert len(link.dtls.listeners("statechange")) == before + 1
    assert len(await link.received(5)) == 5
    link.dtls._state = State.CLOSED
    link.dtls.emit("statechange")
    assert group.direct is not None and not group.direct.current()


async def test_a_managed_writer_stops_at_the_dtls_state_change_and_queues_behind_asyncio(
    pc: RTCPeerConnection, link: Link
) -> None:
    """The managed fast path looks at neither transport per send: a "statechange" to
    closed stops it at once, and datagrams queued in asyncio are found at the next
    report, after which packets go behind them."""
    reports = rtc.SenderReports()
    w = _writer(pc, link, reports)
    assert w.send_now(1, 0, 0, b"a", 0) and w.send_now(2, 960, 0, b"b", 0)
    assert w._d is not None and w._d.live
    transport: Any = link.protocol.transport
    transport._buffer.append((b"queued", link.pair.remote_addr))
    reports._report(reports_group := writer_mod._Group([w], 0.0))
    assert reports_group.writers == (w,) and w._d is None  # found at the report
    assert w.send_now(3, 1920, 0, b"c", 0)
    first, _third = transport._buffer  # behind what was queued
    assert first[0] == b"queued"
    await asyncio.sleep(0)
    assert len(link.via_aiortc) == 1  # the report too went aiortc's way, not past the queue
    transport._buffer.clear()
    assert w.send_now(4, 2880, 0, b"d", 0) and w._d is not None
    link.dtls._state = State.CLOSED
    link.dtls.emit("statechange")
    assert not w._d.live
    assert not w.send_now(5, 3840, 0, b"e", 0)  # the caller then awaits write(), which raises
    assert await link.received(3) == [
        _expected(w, 1, 0, 0, b"a"),
        _expected(w, 2, 960, 0, b"b"),
        _expected(w, 4, 2880, 0, b"d"),
    ]


async def test_taken_over_sender_sends_no_reports_of_its_own_and_bye_on_stop(
    pc: RTCPeerConnection, link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RTCRtpSender.send starts _run_rtcp; taken over, it only says BYE when stopped."""
    import aiortc.rtcrtpsender

    # aiortc's own loop reports after 0.5 + random() s: 0.5 s here
    monkeypatch.setattr(aiortc.rtcrtpsender.random, "random", lambda: 0.0)
    w = _writer(pc, link, rtc.SenderReports())
    sent: list[bytes] = []
    sender: Any = w._sender

    async def capture(packets: list[Any]) -> None:
        sent.append(b"".join(bytes(p) for p in packets))

    sender._send_rtcp = capture
    task = asyncio.ensure_future(sender._run_rtcp())
    await asyncio.sleep(0.7)  # aiortc's own loop would have sent a report by now
    await sender._RTCRtpSender__rtcp_started.wait()
    assert sent == []
    task.cancel()
    await asyncio.wait_for(sender._RTCRtpSender__rtcp_exited.wait(), 2)
    (bye,) = RtcpPacket.parse(sent[0])
    assert bye.sources == [w.ssrc]  # type: ignore[attr-defined]


def test_srtp_errors_are_pylibsrtp_errors() -> None:
    assert str(writer_mod.srtp_error(10)) == str(pylibsrtp.ERRORS[10])
    assert "error 999" in str(writer_mod.srtp_error(999))


async def test_a_kernel_lane_is_armed_after_a_send_and_disarmed_when_the_path_changes(
    pc: RTCPeerConnection, link: Link
) -> None:
    """`arm` hands the writer's direct path to a fan-out lane once a send has looked it
    up; the report folds the kernel's counts into aiortc's and, finding datagrams queued
    in asyncio, disarms the lane (later packets go behind the queue, the Python way); a
    refused kernel send goes to asyncio's transport (`requeue`); a "statechange" away
    from connected disarms it too."""
    from spacesim.rtc import native as nv

    fan = nv.FanOut(1, 960, 48)
    reports = rtc.SenderReports()
    w = _writer(pc, link, reports)
    lane = fan.add(w)
    w.attach(fan, 0, lane)
    assert not w.arm()  # no direct path looked up yet
    assert w.send_now(1, 0, 0, b"a", 5) and w.arm() and fan.armed(0, lane)

    def kernel(seq: int, payload: bytes) -> int:  # gen 1: the lane's offsets are seq -> seq
        return fan.run(0, payload, seq, 960 * (seq - 1), 0, 1, seq, 9, -1, 0, 1 << 30)

    fan.tab[0, nv.GEN, lane] = 1
    fan.tab[0, nv.SEQ_OFF, lane] = fan.tab[0, nv.TS_OFF, lane] = 0
    fan.tab[0, nv.LAST_SEQ, lane] = 1
    assert kernel(2, b"bb") == nv.DONE and kernel(3, b"ccc") == nv.DONE
    assert await link.received(3) == [
        _expected(w, 1, 0, 0, b"a"),
        _expected(w, 2, 960, 0, b"bb"),
        _expected(w, 3, 1920, 0, b"ccc"),
    ]
    transport: Any = link.protocol.transport
    transport._buffer.append((b"queued", link.pair.remote_addr))
    reports._report(writer_mod._Group([w], 0.0))
    sender: Any = w._sender
    assert sender._RTCRtpSender__packet_count == 3  # 1 by send_now + 2 by the kernel
    assert sender._RTCRtpSender__octet_count == 6
    assert sender._RTCRtpSender__rtp_timestamp == 1920
    assert not fan.armed(0, lane) and kernel(4, b"d") == nv.PYTHON
    transport._buffer.clear()
    assert w.send_now(4, 2880, 0, b"d", 9) and w.arm()
    w.requeue(b"refused")  # asyncio sends it (nothing queued) and the lane goes Python
    assert not fan.armed(0, lane) and w._d is None
    assert w.send_now(5, 3840, 0, b"e", 9) and w.arm()
    link.dtls._state = State.CLOSED
    link.dtls.emit("statechange")
    assert not fan.armed(0, lane)
    w.detach()
    assert w._lane is None
