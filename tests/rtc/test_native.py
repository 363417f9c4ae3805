"""spacesim.rtc.native: the fan-out kernel -- its rewrite rule against the earlier path's
`_SlotStream`, its SRTP against a real pylibsrtp receive session on real UDP sockets, and
where it hands lanes back to Python."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from typing import Any

import pylibsrtp
import pytest
from aiortc.rtp import RtpPacket
from pylibsrtp._binding import ffi

from spacesim.rtc import native as nv
from spacesim.rtc.writer import _sockaddr
from spacesim.server.media import MediaRoom, _Peer, _SlotStream

pytestmark = pytest.mark.timeout(30)

KEY = os.urandom(30)
PT = 111


def _session(direction: int, ssrc: int = 0) -> pylibsrtp.Session:
    return pylibsrtp.Session(
        pylibsrtp.Policy(
            key=KEY,
            ssrc_type=direction,
            ssrc_value=ssrc,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        )
    )


class Lane:
    """A lane armed with a real SRTP session, a sending socket and a receiving one."""

    def __init__(self, fan: nv.FanOut, k: int, i: int, ssrc: int, host: str = "127.0.0.1"):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.rx = socket.socket(fam, socket.SOCK_DGRAM)
        self.rx.bind((host, 0))
        self.rx.setblocking(False)
        self.tx = socket.socket(fam, socket.SOCK_DGRAM)
        self.tx.setblocking(False)
        self.session = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self.unprotect = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self.ssrc = ssrc
        self.arm(fan, k, i, self.rx.getsockname()[:2])

    def arm(self, fan: nv.FanOut, k: int, i: int, addr: tuple[str, int]) -> None:
        sa = _sockaddr(*addr)
        assert sa is not None
        srtp = int(ffi.cast("uintptr_t", self.session._srtp[0]))
        fan.arm(k, i, srtp, self.tx.fileno(), sa, self.ssrc, PT, self)

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.unprotect.unprotect(self.rx.recv(2048)))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


def _rtp(ssrc: int, seq: int, ts: int, marker: int, payload: bytes) -> bytes:
    p = RtpPacket(payload_type=PT, marker=marker, sequence_number=seq, timestamp=ts, ssrc=ssrc)
    p.payload = payload
    return p.serialize()


def _run(fan: nv.FanOut, k: int, payload: bytes, seq: int, ts: int, gen: int, now: int) -> int:
    return fan.run(k, payload, seq, ts, 0, gen, now, 1 << 63, -1, 0, 1 << 30)


class Recorder:
    """A writer that records what the fan-out asks it to send (never armed)."""

    def __init__(self) -> None:
        self.out: list[tuple[int, int, int]] = []

    def send_now(self, seq: int, ts: int, marker: int, payload: bytes, ntp: int) -> bool:
        self.out.append((seq, ts, marker))
        return True

    def attach(self, fan: object, k: int, lane: int) -> None:
        pass

    def detach(self) -> None:
        pass

    def arm(self) -> bool:
        return False


class Packet:
    def __init__(self, seq: int, ts: int, marker: int) -> None:
        self.sequence_number, self.timestamp, self.marker = seq, ts, marker
        self.payload = b"x"


@pytest.mark.parametrize("seed", range(6))
async def test_the_kernel_rewrites_as_the_earlier_path_does(seed: int) -> None:
    """Random packet sequences -- speaker (generation) changes, late and duplicate
    packets, jumps, wraparound of sequence number and timestamp, gaps in arrival time --
    through the kernel's room and the earlier path's room: the same numbers, markers and
    final state for every listener and slot."""
    rng = random.Random(seed)
    slots, names = 2, [f"l{i}" for i in range(4)]
    rooms = [MediaRoom(lambda n: True, slots=slots, direct=d) for d in (True, False)]
    peers: list[list[_Peer]] = []
    for room in rooms:
        ps = []
        for name in names:
            peer = _Peer(name, None)  # type: ignore[arg-type]
            peer.writers = [Recorder() for _ in range(slots)]  # type: ignore[misc]
            if room._fan is None:
                peer.streams = [_SlotStream() for _ in range(slots)]
            room._peers[name] = peer
            room._go_live(peer)
            ps.append(peer)
        peers.append(ps)
    fan = rooms[0]._fan
    assert fan is not None
    for kernel_peer, py_peer in zip(*peers, strict=True):  # the same random starting points
        for k, st in enumerate(py_peer.streams):
            fan.tab[k, nv.LAST_SEQ, kernel_peer.lane] = st.last_seq = rng.choice(
                [rng.getrandbits(16), 0xFFFF, 0xFFFE]
            )
            fan.tab[k, nv.LAST_TS, kernel_peer.lane] = st.last_ts = rng.choice(
                [rng.getrandbits(32), 0xFFFFFFFF - 500]
            )
    now = rng.randrange(0, 10**9)
    gens = [1, 1]
    seqs = [rng.getrandbits(16), rng.getrandbits(16)]
    tss = [rng.getrandbits(32), rng.getrandbits(32)]
    for _ in range(300):
        k = rng.randrange(slots)
        r = rng.random()
        if r < 0.08:  # a new speaker in the slot: own numbering
            gens[k] += rng.randrange(1, 3)
            seqs[k], tss[k] = rng.getrandbits(16), rng.getrandbits(32)
        elif r < 0.2:  # a late or duplicate packet
            seqs[k] = (seqs[k] - rng.randrange(0, 4)) & 0xFFFF
        elif r < 0.25:  # a jump
            seqs[k] = (seqs[k] + rng.randrange(2, 40000)) & 0xFFFF
        else:
            seqs[k] = (seqs[k] + 1) & 0xFFFF
        tss[k] = (tss[k] + rng.choice([960, 960, 0, 1920, -960, 10**6])) & 0xFFFFFFFF
        now += rng.choice([0, 1, 20, 20, 21, 5000, 3 * 10**7])
        marker = int(rng.random() < 0.1)
        for room in rooms:
            await room._fan_out(None, Packet(seqs[k], tss[k], marker), k, gens[k], now)  # type: ignore[arg-type]
    for kernel_peer, py_peer in zip(*peers, strict=True):
        for k in range(slots):
            sent = kernel_peer.writers[k].out  # type: ignore[attr-defined]
            assert sent == py_peer.writers[k].out  # type: ignore[attr-defined]
            assert len(sent) > 50
            st = py_peer.streams[k]
            assert fan.stream(k, kernel_peer.lane) == (
                st.gen, st.seq_off, st.ts_off, st.last_seq, st.last_ts, st.last_ms
            )  # fmt: skip
    assert rooms[0].forwarded == rooms[1].forwarded == 300 * len(names)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def test_armed_lanes_send_srtp_that_a_receive_session_decrypts() -> None:
    """The kernel's datagrams, IPv4 and IPv6, unprotected by a real pylibsrtp session,
    are the RTP packets of the rewritten numbers; its counts are what it sent."""
    fan = nv.FanOut(1, 960, 48)
    hosts = ["127.0.0.1", "127.0.0.1"] + (["::1"] if _has_ipv6_loopback() else [])
    lanes = []
    for n, host in enumerate(hosts):
        i = fan.add(None)
        lanes.append((i, Lane(fan, 0, i, 0x1000 + n, host)))
    try:
        payloads = [os.urandom(rng) for rng in (1, 60, 160, 1200)]
        for j, payload in enumerate(payloads):
            assert _run(fan, 0, payload, 5000 + j, 96000 + 960 * j, 1, 20 * j) == nv.DONE
            assert fan.out[nv.O_SENT] == len(lanes)
        await asyncio.sleep(0.05)
        for i, lane in lanes:
            _, seq_off, ts_off, *_ = fan.stream(0, i)
            want = [
                _rtp(
                    lane.ssrc,
                    (5000 + j + seq_off) & 0xFFFF,
                    (96000 + 960 * j + ts_off) & 0xFFFFFFFF,
                    int(j == 0),  # a new source's first packet
                    p,
                )
                for j, p in enumerate(payloads)
            ]
            assert lane.received() == want
            packets, octets, tx_bytes, rtp_ts, ntp = fan.take_counts(0, i)
            assert (packets, octets) == (len(payloads), sum(map(len, payloads)))
            assert tx_bytes == sum(len(p) + 12 + 10 for p in payloads)  # + 80-bit auth tag
            assert rtp_ts == (96000 + 960 * 3 + ts_off) & 0xFFFFFFFF and ntp == 1 << 63
            assert fan.take_counts(0, i)[0] == 0
    finally:
        for _, lane in lanes:
            lane.close()


async def test_a_refused_sendto_stops_at_its_lane_with_the_protected_packet() -> None:
    """Lane 1's sendto fails (here EACCES: broadcast without SO_BROADCAST; EAGAIN takes
    the same way): the kernel returns at lane 1 before lane 2 is sent, with lane 1's
    protected datagram in the scratch buffer, and goes on from lane 2 when called."""
    fan = nv.FanOut(1, 960, 48)
    lanes = [Lane(fan, 0, fan.add(None), 0x2000 + n) for n in range(3)]
    try:
        lanes[1].arm(fan, 0, 1, ("255.255.255.255", 9))
        assert _run(fan, 0, b"abc", 10, 960, 1, 0) == nv.SENDTO_FAILED
        assert (fan.out[nv.O_LANE], fan.out[nv.O_SENT]) == (1, 2)  # lane 1 counts as sent
        data = fan.scratch[: int(fan.out[nv.O_ARG])].tobytes()
        assert lanes[1].unprotect.unprotect(data)[12:] == b"abc"
        await asyncio.sleep(0.02)
        assert [len(lane.received()) for lane in lanes] == [1, 0, 0]  # lane 2 not yet
        assert fan.run(0, b"abc", 10, 960, 0, 1, 0, 0, -1, 2, 1 << 30) == nv.DONE
        await asyncio.sleep(0.02)
        assert [len(lane.received()) for lane in lanes] == [0, 0, 1]
    finally:
        for lane in lanes:
            lane.close()


async def test_a_failing_lane_is_dropped_and_the_others_still_hear() -> None:
    """libsrtp refuses lane 1 (a session for another SSRC): the room counts one send
    error, drops that listener, and the listeners after it get every packet."""
    room = MediaRoom(lambda n: True, slots=1)
    fan = room._fan
    assert fan is not None
    peers, lanes = [], []
    for n in range(3):
        peer = _Peer(f"l{n}", None)  # type: ignore[arg-type]
        peer.writers = [Recorder()]  # type: ignore[list-item]
        room._peers[peer.name] = peer
        room._go_live(peer)
        peers.append(peer)
        lanes.append(Lane(fan, 0, peer.lane, 0x3000 + n))
    try:
        lanes[1].session = _session(pylibsrtp.Policy.SSRC_SPECIFIC, ssrc=1)
        lanes[1].arm(fan, 0, peers[1].lane, lanes[1].rx.getsockname())
        for j in range(4):
            await room._fan_out(None, Packet(j, 960 * j, 0), 0, 1, 20 * j)  # type: ignore[arg-type]
        await asyncio.sleep(0.02)
        assert room.stats()["send_errors"] == 1
        assert peers[1] not in room._subs and not fan.armed(0, 1)
        assert [len(lane.received()) for lane in lanes] == [4, 0, 4]
        assert room.forwarded == 4 + 4
        await room.close_all()
    finally:
        for lane in lanes:
            lane.close()


def test_lanes_are_reused_and_the_table_grows() -> None:
    fan = nv.FanOut(2, 960, 48)
    lanes = [fan.add(n) for n in range(40)]
    assert lanes == list(range(40)) and fan.tab.shape[2] >= 40
    fan.remove(7)
    assert not fan.tab[:, nv.ACTIVE, 7].any() and fan.owners[7] is None
    assert fan.add("new") == 7 and fan.owners[7] == "new"
    assert fan.stream(1, 7)[0] == -1 and fan.stream(1, 7)[5] == -1  # fresh state
    # every lane unarmed: the kernel hands each one back, in order
    seen = []
    i = 0
    while (res := fan.run(0, b"x", 1, 1, 0, 1, 0, 0, 3, i, 1 << 30)) != nv.DONE:
        assert res == nv.PYTHON
        seen.append(int(fan.out[nv.O_LANE]))
        i = seen[-1] + 1
    assert seen == [n for n in range(40) if n != 3]  # the speaker's own lane is skipped


def test_sockaddr_layouts() -> None:
    v4 = _sockaddr("10.1.2.3", 0x1234)
    assert v4 == socket.AF_INET.to_bytes(2, "little") + b"\x12\x34\x0a\x01\x02\x03" + bytes(8)
    v6 = _sockaddr("::1", 5)
    assert v6 is not None and len(v6) == 28 and v6[8:24] == socket.inet_pton(socket.AF_INET6, "::1")
    assert _sockaddr("localhost", 5) is None and _sockaddr("fe80::1%eth0", 5) is None


def test_the_kernel_is_cached_for_the_next_process() -> None:
    """numba's cache index for the kernel exists once it is compiled: the next server
    process loads it instead of compiling (~0.3 s instead of ~1-3 s). Nothing of this
    process is baked in (a ctypes pointer would make numba refuse to cache)."""
    nv.load()
    kernel: Any = nv._fan_out
    path = kernel._cache._cache_path  # numba/core/caching.py _CacheImpl: where it went
    assert any(f.startswith("native._fan_out-") and f.endswith(".nbi") for f in os.listdir(path))


async def test_the_fault_hook_burns_once_per_send_on_both_ways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``SPACESIM_TEST_FAULT_BUSY_US`` burns its time per send whether the kernel or the
    Python way sent it (the kernel then stops after each send)."""
    import time

    from spacesim.server import media

    room = MediaRoom(lambda n: True, slots=1)
    fan = room._fan
    assert fan is not None
    lanes = []
    for n in range(3):
        peer = _Peer(f"l{n}", None)  # type: ignore[arg-type]
        peer.writers = [Recorder()]  # type: ignore[list-item]
        room._peers[peer.name] = peer
        room._go_live(peer)
        if n:
            lanes.append(Lane(fan, 0, peer.lane, 0x4000 + n))
    try:
        monkeypatch.setattr(media, "_FAULT_BUSY_NS", 3_000_000)
        t = time.thread_time()
        await room._fan_out(None, Packet(1, 960, 0), 0, 1, 0)  # type: ignore[arg-type]
        assert time.thread_time() - t >= 0.009  # 3 sends x 3 ms
        assert room.forwarded == 3
        await asyncio.sleep(0.02)
        assert [len(lane.received()) for lane in lanes] == [1, 1]
        await room.close_all()
    finally:
        for lane in lanes:
            lane.close()
