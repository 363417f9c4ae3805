"""The media plane of a room: pass-through forwarding of Opus RTP (no decoding).

One :class:`MediaRoom` per space. Every participant has one server-side WebRTC peer
connection, created by :meth:`MediaRoom.connect` from the client's SDP offer.
Packets a participant publishes are forwarded, payload bytes untouched, to every
other connected participant -- if and only if ``gate(participant)`` is true when the
packet arrives (the room server passes ``policy.Space.may_be_heard``: on stage,
unmuted, space live). The gate is called for every packet, so a mute, demotion or
removal takes effect at the next packet.

Expected SDP offer (the protocol document copies this)
------------------------------------------------------
* Audio only: every ``m=`` section is ``m=audio``; no video, no data channel.
  The first payload type of each audio section must be ``opus/48000/2``
  (browsers and aiortc offer Opus first by default).
* Exactly ``slots`` or ``slots + 1`` audio sections, in this order:

  1. *publish section* -- present only when there are ``slots + 1`` sections:
     direction ``sendonly`` or ``sendrecv`` (``pc.addTrack(mic)`` in a browser,
     ``addTransceiver(track, direction="sendonly")`` in aiortc). The server answers
     ``recvonly``. Offer it whenever the client may ever speak (a listener who is
     promoted later needs no renegotiation: its packets are dropped until the gate
     lets them through).
  2. ``slots`` *listen sections* -- direction ``recvonly`` (or ``sendrecv``; the
     server answers ``sendonly`` either way and ignores anything sent on them).
     Each carries one continuous RTP stream: the answer's ``a=ssrc`` line of that
     section is the SSRC the server uses for it.

* Complete (non-trickle) ICE: the offer carries its candidates, as aiortc's
  ``localDescription`` does after ``setLocalDescription``; so does the answer.

Slots
-----
Each active speaker holds one slot index, the same for every listener, while they
are heard; a slot is freed when its speaker's next packet is gated off, when they
leave, or when they have sent nothing for ``idle_ms`` and another speaker needs it.
With more active speakers than slots, the extra speakers' packets are dropped
(``dropped_no_slot``). Per listener and slot the server rewrites SSRC (the slot's),
sequence numbers (continuous across speaker changes; the publisher's own gaps pass
through) and timestamps (monotonic: a new speaker continues from the slot's last
timestamp plus the wall-clock gap, at least one 20 ms frame); the marker bit is set
on a new speaker's first packet. Header extensions are not forwarded. A speaker
never receives their own audio.

Test-only fault hook
--------------------
``SPACESIM_TEST_FAULT_BUSY_US=N`` (read once, when this module is imported) makes
every forwarded packet burn N µs of extra CPU time of the forwarding thread (spun on
the thread's CPU clock, so preemption on a busy machine does not shorten it). It
exists so `spacesim regress` can be shown to catch a slowdown; the server logs a
warning at startup while it is set and refuses to start with ``--no-dev``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from spacesim import rtc
from spacesim.rtc.writer import srtp_error

if TYPE_CHECKING:
    from spacesim.rtc.native import FanOut

__all__ = [
    "FAULT_BUSY_US",
    "FAULT_ENV",
    "MediaRoom",
    "MediaSetupError",
    "OfferShape",
    "Superseded",
    "parse_offer",
]

log = logging.getLogger("spacesim.server.media")

_CLOCK_PER_MS = 48  # Opus RTP clock: 48 kHz
_FRAME = 960  # one 20 ms Opus frame in RTP clock units

FAULT_ENV = "SPACESIM_TEST_FAULT_BUSY_US"


def _fault_from_env() -> float:
    raw = os.environ.get(FAULT_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={raw!r} is not a number of microseconds") from None
    if not 0 <= value <= 10_000:
        raise ValueError(f"{FAULT_ENV}={raw!r} must be within 0..10000 microseconds")
    return value


#: Extra CPU µs burnt per forwarded packet (test-only fault hook; 0 = off).
FAULT_BUSY_US = _fault_from_env()
_FAULT_BUSY_NS = int(FAULT_BUSY_US * 1000)


def _burn(ns: int) -> None:
    """Spin until this thread has used `ns` more nanoseconds of CPU time."""
    end = time.thread_time_ns() + ns
    while time.thread_time_ns() < end:
        pass


class MediaSetupError(Exception):
    """The server failed to set up a connection for an offer it accepted: a server fault,
    not the client's (logged with its cause where it happened)."""


class Superseded(Exception):
    """The connection was closed while it was being set up: by a newer connect of the
    same participant, or by their leaving (neither the client's offer nor a fault)."""


class OfferShape:
    """What :func:`parse_offer` found: the publish section's mid (or None) and the
    listen sections' mids in order."""

    __slots__ = ("listen_mids", "publish_mid")

    def __init__(self, publish_mid: str | None, listen_mids: list[str]) -> None:
        self.publish_mid = publish_mid
        self.listen_mids = listen_mids


def parse_offer(sdp: str, slots: int) -> OfferShape:
    """Check an offer against the expected shape (module docstring); ValueError if not."""
    sections: list[dict[str, str]] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            if len(parts) < 4:
                raise ValueError(f"malformed media line {line!r}")
            sections.append({"kind": parts[0], "pt": parts[3], "dir": "sendrecv"})
        elif sections and line.startswith("a="):
            attr = line[2:]
            cur = sections[-1]
            if attr in ("sendrecv", "sendonly", "recvonly", "inactive"):
                cur["dir"] = attr
            elif attr.startswith("mid:"):
                cur["mid"] = attr[4:]
            elif attr.startswith(f"rtpmap:{cur['pt']} "):
                cur["codec"] = attr.split(" ", 1)[1].lower()
    if not sections:
        raise ValueError("the offer has no media sections")
    for i, s in enumerate(sections):
        if s["kind"] != "audio":
            raise ValueError(f"media section {i} is {s['kind']!r}; only audio is accepted")
        if "mid" not in s:
            raise ValueError(f"audio section {i} has no a=mid")
        if not s.get("codec", "").startswith("opus/48000"):
            raise ValueError(f"audio section {i} does not offer Opus as its first codec")
    if len(sections) == slots + 1:
        publish, listen = sections[0], sections[1:]
        if publish["dir"] not in ("sendonly", "sendrecv"):
            raise ValueError("the publish section (first of slots + 1) must be sendonly/sendrecv")
    elif len(sections) == slots:
        publish, listen = None, sections
    else:
        raise ValueError(
            f"expected {slots} listen sections, optionally after one publish section; "
            f"got {len(sections)} audio sections"
        )
    for s in listen:
        if s["dir"] not in ("recvonly", "sendrecv"):
            raise ValueError(f"listen section {s['mid']!r} must be recvonly (or sendrecv)")
    return OfferShape(publish["mid"] if publish else None, [s["mid"] for s in listen])


class _SlotStream:
    """One listener's outgoing stream on one slot: the rewrite for its current source.

    The earlier send path's (``MediaRoom(direct=False)``); the direct path keeps the same
    state in `spacesim.rtc.native.FanOut`'s arrays and its kernel applies the same rule
    (tests/rtc/test_native.py checks they agree).
    """

    __slots__ = ("gen", "last_ms", "last_seq", "last_ts", "seq_off", "ts_off")

    def __init__(self) -> None:
        self.gen = -1  # slot generation this stream is rebased on
        self.seq_off = 0
        self.ts_off = 0
        self.last_seq = random.getrandbits(16)
        self.last_ts = random.getrandbits(32)
        self.last_ms = -1  # -1: nothing sent yet

    def rebase(self, gen: int, seq: int, ts: int, now_ms: int) -> None:
        """Continue this stream with a new source whose next packet is (seq, ts)."""
        step = _FRAME
        if self.last_ms >= 0:
            step = max(_FRAME, min((now_ms - self.last_ms) * _CLOCK_PER_MS, 1 << 30))
        self.gen = gen
        self.seq_off = (self.last_seq + 1 - seq) & 0xFFFF
        self.ts_off = (self.last_ts + step - ts) & 0xFFFFFFFF


class _Peer:
    __slots__ = ("lane", "live", "name", "pc", "publish_mid", "streams", "writers")

    def __init__(self, name: str, pc: RTCPeerConnection) -> None:
        self.name = name
        self.pc = pc
        self.publish_mid: str | None = None
        self.writers: list[rtc.RtpWriter] = []
        self.streams: list[_SlotStream] = []
        self.live = False  # connected and writers bound: receives forwarded audio
        self.lane = -1  # its lane in the room's FanOut while live (direct path)


class MediaRoom:
    """Forwards each heard speaker's Opus RTP to every other participant of one room.

    ``gate(participant)`` is called for every packet a participant publishes; only
    when it returns True is the packet forwarded. ``slots`` is how many speakers a
    listener hears at once (one listen section per slot in every offer).
    """

    def __init__(
        self,
        gate: Callable[[str], bool],
        slots: int = 3,
        idle_ms: int = 1000,
        *,
        direct: bool = True,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        #: False: the earlier send path (pylibsrtp ``Session.protect`` and the asyncio
        #: transport per packet, aiortc's own RTCP task per sender) -- kept as
        #: benchmarks/bench_sfu.py's baseline; True: `rtc.RtpWriter`'s direct path and
        #: one `rtc.SenderReports` timer for the room's sender reports.
        self.direct = direct
        self._reports = rtc.SenderReports() if direct else None
        # The direct path's fan-out: a numba kernel over per-listener arrays (imported
        # here, so that only a server on the direct path loads numba; the kernel is
        # compiled or loaded from numba's cache now, before any listener connects)
        self._fan: FanOut | None = None
        if direct:
            from spacesim.rtc.native import FanOut

            self._fan = FanOut(slots, _FRAME, _CLOCK_PER_MS)
        self._gate = gate
        self.slots = slots
        self.idle_ms = idle_ms
        self._peers: dict[str, _Peer] = {}
        self._subs: tuple[_Peer, ...] = ()  # live peers, snapshot for the fan-out loop
        self._owner: list[str | None] = [None] * slots
        self._slot_gen: list[int] = [0] * slots
        self._slot_ms: list[int] = [0] * slots
        self._slot_of: dict[str, int] = {}
        self._next_gen = 1
        self._tasks: set[asyncio.Task[None]] = set()
        # called with (participant, Opus payload, arrival ms) for each packet the gate lets
        # through, before the fan-out: live captions buffer it (it must return at once)
        self.on_heard: Callable[[str, bytes, int], None] | None = None
        self.received = 0
        self.forwarded = 0
        self.dropped = 0
        self.dropped_no_slot = 0
        self.send_errors = 0
        self.sent_async = 0
        #: Called with a participant's name when their connection fails or is closed by
        #: the other end (not when the server closes it): the app's presence timeout.
        self.on_lost: Callable[[str], None] | None = None
        # the space's recording (spacesim.server.recording.Track) while it records: each
        # heard packet is appended to its buffer, nothing more on this path
        self.recorder: Any = None
        # Cluster (spacesim.server.cluster): `relays` are called with (speaker, slot, slot
        # generation, packet) once per heard packet, to send it once to each other node;
        # `upstream`, when set (a room whose origin is another node), takes every packet a
        # publisher here sends instead of the gate: the origin decides and relays it back.
        self.relays: list[Callable[[str, int, int, rtc.RtpPacket], None]] = []
        self.upstream: Callable[[str, rtc.RtpPacket], None] | None = None

    # ------------------------------------------------------------------ signalling

    async def connect(self, participant: str, offer_sdp: str) -> str:
        """Create the participant's server-side connection; return the SDP answer.

        Replaces any earlier connection of the same participant. Raises ValueError if
        the offer does not have the expected shape (module docstring) or aiortc
        refuses it (the client's fault); `Superseded` if the connection was closed
        while being set up; `MediaSetupError` if setting it up failed after the offer
        was accepted (the server's fault; logged here with the cause).
        """
        shape = parse_offer(offer_sdp, self.slots)
        await self.close(participant)
        k = self._slot_of.get(participant)
        if k is not None and shape.publish_mid is not None:
            # A new publishing connection starts a new RTP sequence and timestamp: its
            # next packet takes a slot anew (a new generation), so each listener's
            # stream rebases instead of jumping by the old and new starts' difference.
            self._release(k)
        pc = rtc.new_peer_connection()
        peer = _Peer(participant, pc)
        self._peers[participant] = peer
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:
            await self._setup_failed(peer)
            raise ValueError(str(exc) or type(exc).__name__) from None
        except BaseException:
            await self._close_peer(peer)
            raise
        try:
            by_mid = {t.mid: t for t in pc.getTransceivers()}
            if shape.publish_mid is not None:
                peer.publish_mid = shape.publish_mid
                receiver = by_mid[shape.publish_mid].receiver

                async def on_packet(packet: rtc.RtpPacket, arrival_ms: int) -> None:
                    await self._forward(peer, packet, arrival_ms)

                # before receive(): aiortc calls it once ICE and DTLS are up
                rtc.tap_rtp(receiver, on_packet)
            peer.writers = [rtc.RtpWriter(by_mid[mid]) for mid in shape.listen_mids]
            for w in peer.writers:
                w.direct = self.direct
                if self._reports is not None:
                    self._reports.take_over(w)
            if self._fan is None:
                peer.streams = [_SlotStream() for _ in shape.listen_mids]

            @pc.on("connectionstatechange")
            def on_state() -> None:
                self._on_state(peer)

            await pc.setLocalDescription(await pc.createAnswer())
            answer: str = pc.localDescription.sdp
        except Exception as exc:
            await self._setup_failed(peer)
            log.error("media setup failed for %s", participant, exc_info=True)
            raise MediaSetupError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            await self._close_peer(peer)
            raise
        return answer

    async def _setup_failed(self, peer: _Peer) -> None:
        """Close a connection whose setup raised; `Superseded` if it was closed already
        (aiortc then raises for the closed connection, whoever's fault the rest is)."""
        closed = self._peers.get(peer.name) is not peer
        await self._close_peer(peer)
        if closed:
            raise Superseded(f"{peer.name}'s connection was closed while being set up")

    def _on_state(self, peer: _Peer) -> None:
        state = peer.pc.connectionState
        if state == "connected" and not peer.live and self._peers.get(peer.name) is peer:
            try:
                for w in peer.writers:
                    w.bind()
            except Exception:
                log.error("media: binding %s's writers failed; dropped", peer.name, exc_info=True)
                self._drop(peer)
                return
            self._go_live(peer)
            if self._reports is not None:
                self._reports.add(peer.writers)
        elif state in ("failed", "closed") and self._peers.get(peer.name) is peer:
            self._drop(peer)
            if self.on_lost is not None:
                self.on_lost(peer.name)

    def _go_live(self, peer: _Peer) -> None:
        """The peer receives forwarded audio from the next packet on (its lane, if any,
        goes the Python way until its writers' direct path is up)."""
        peer.live = True
        self._subs = (*self._subs, peer)
        fan = self._fan
        if fan is not None:
            peer.lane = fan.add(peer)
            for k, w in enumerate(peer.writers):
                w.attach(fan, k, peer.lane)

    def _drop(self, peer: _Peer) -> None:
        """Stop sending to a peer at once and close it in the background."""
        self._unlist(peer)
        task = asyncio.ensure_future(self._close_peer(peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _unlist(self, peer: _Peer) -> None:
        if self._reports is not None:
            self._reports.discard(peer.writers)
        peer.live = False
        self._subs = tuple(p for p in self._subs if p is not peer)
        if peer.lane >= 0 and self._fan is not None:
            for w in peer.writers:
                w.detach()
            self._fan.remove(peer.lane)
            peer.lane = -1
        k = self._slot_of.get(peer.name)
        if k is not None:
            self._release(k)

    async def close(self, participant: str) -> None:
        """Close a participant's connection (no-op if there is none)."""
        peer = self._peers.get(participant)
        if peer is not None:
            await self._close_peer(peer)

    async def _close_peer(self, peer: _Peer) -> None:
        """Close this very connection; a newer one of the same participant is left alone."""
        if self._peers.get(peer.name) is peer:
            del self._peers[peer.name]
        self._unlist(peer)
        with contextlib.suppress(Exception):
            await peer.pc.close()

    async def close_all(self) -> None:
        """Close every connection of the room."""
        for name in list(self._peers):
            await self.close(name)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ queries

    def participants(self) -> list[str]:
        """Participants with a connection (connected or still connecting)."""
        return list(self._peers)

    def slot_ssrcs(self, participant: str) -> list[int]:
        """The SSRC of each of the participant's listen slots (as in the answer)."""
        return [w.ssrc for w in self._peers[participant].writers]

    def speaker_slots(self) -> dict[str, int]:
        """Which speaker currently holds which slot index."""
        return dict(self._slot_of)

    def stats(self) -> dict[str, int]:
        """Counters: packets received from publishers, forwarded (one per listener
        send), dropped (gate said no), dropped_no_slot, send_errors; and sizes."""
        return {
            "received": self.received,
            "forwarded": self.forwarded,
            "dropped": self.dropped,
            "dropped_no_slot": self.dropped_no_slot,
            "send_errors": self.send_errors,
            "sent_async": self.sent_async,
            "participants": len(self._peers),
            "listening": len(self._subs),
            "speaking": len(self._slot_of),
        }

    # ------------------------------------------------------------------ slots

    def _assign(self, name: str, now_ms: int) -> int | None:
        owner = self._owner
        k = next((i for i, o in enumerate(owner) if o is None), None)
        if k is None:
            # take the slot idle the longest, if idle long enough
            k = min(range(self.slots), key=self._slot_ms.__getitem__)
            if now_ms - self._slot_ms[k] < self.idle_ms:
                return None
            self._release(k)
        owner[k] = name
        self._slot_of[name] = k
        self._slot_gen[k] = self._next_gen
        self._next_gen += 1
        return k

    def _release(self, k: int) -> None:
        name = self._owner[k]
        if name is not None:
            self._slot_of.pop(name, None)
        self._owner[k] = None

    # ------------------------------------------------------------------ hot path

    async def relayed(
        self, speaker: str, k: int, gen: int, packet: rtc.RtpPacket, now_ms: int
    ) -> None:
        """A packet the origin node heard, slotted (`k`, `gen`) and relayed here: the same
        fan-out as the origin's own (the speaker, if connected here, hears nothing)."""
        if 0 <= k < self.slots:
            self.received += 1
            await self._fan_out(self._peers.get(speaker), packet, k, gen, now_ms)

    async def publish(self, speaker: str, packet: rtc.RtpPacket, now_ms: int) -> None:
        """A packet a publisher connected to another node sent (relayed up to this origin
        node): gated, slotted and fanned out as if it had arrived here."""
        await self._forward(_Peer(speaker, None), packet, now_ms)  # type: ignore[arg-type]

    async def _forward(self, src: _Peer, packet: rtc.RtpPacket, now_ms: int) -> None:
        """One packet from a publisher: gate, slot, rewrite and send to each listener."""
        up = self.upstream
        if up is not None:
            up(src.name, packet)
            return
        self.received += 1
        name = src.name
        try:
            heard = self._gate(name)
        except Exception:
            heard = False
        k = self._slot_of.get(name)
        if not heard:
            self.dropped += 1
            if k is not None:
                self._release(k)
            return
        tap = self.on_heard
        payload = packet.payload
        if tap is not None:
            try:
                tap(name, payload, now_ms)
            except Exception:  # captions must never cost the audio
                log.exception("media: the caption tap failed")
        if k is None:
            k = self._assign(name, now_ms)
            if k is None:
                self.dropped_no_slot += 1
                return
        self._slot_ms[k] = now_ms
        gen = self._slot_gen[k]
        rec = self.recorder
        if rec is not None:
            rec.buf.append((now_ms, name, payload))
        for relay in self.relays:
            relay(name, k, gen, packet)
        await self._fan_out(src, packet, k, gen, now_ms)

    async def _fan_out(
        self, src: _Peer | None, packet: rtc.RtpPacket, k: int, gen: int, now_ms: int
    ) -> None:
        """Rewrite a slotted packet for each live listener here and send it.

        On the direct path the `FanOut` kernel sends to every armed lane in one call;
        it stops at a lane it cannot serve (`native.PYTHON`: not armed -- just
        connected, a TURN relay, asyncio holding a queue -- with the rewritten numbers)
        or whose ``sendto`` was refused (`native.SENDTO_FAILED`: the protected datagram
        is in its scratch buffer), that lane is served here, and the kernel goes on
        from the next one: one order of sends, one rewrite rule.
        """
        fan = self._fan
        if fan is None:
            await self._fan_out_py(src, packet, k, gen, now_ms)
            return
        from spacesim.rtc import native as nv

        seq = packet.sequence_number
        ts = packet.timestamp
        marker = int(packet.marker)
        payload = packet.payload
        if type(payload) is not bytes:
            payload = bytes(payload)
        ntp = rtc.ntp_now()
        skip = src.lane if src is not None else -1
        busy = _FAULT_BUSY_NS
        limit = 1 if busy else 1 << 30  # the fault hook burns between sends
        out = fan.out
        sent = 0
        i = 0
        while True:
            res = fan.run(k, payload, seq, ts, marker, gen, now_ms, ntp, skip, i, limit)
            n = int(out[nv.O_SENT])
            sent += n
            if busy and n:
                _burn(busy * n)  # n <= 1: the kernel stops after each send
            if res == nv.DONE:
                break
            i = int(out[nv.O_LANE])
            if res == nv.LIMIT:
                continue
            sub: _Peer = fan.owners[i]
            writer = sub.writers[k]
            try:
                if res == nv.PYTHON:
                    out_seq, out_ts, mark = (
                        int(out[nv.O_SEQ]),
                        int(out[nv.O_TS]),
                        int(out[nv.O_MARK]),
                    )
                    if writer.send_now(out_seq, out_ts, mark, payload, ntp):
                        writer.arm()
                    else:
                        self.sent_async += 1  # not a plain UDP pair (e.g. TURN): the slow path
                        await writer.write(out_seq, out_ts, mark, payload)
                    sent += 1
                    if busy:
                        _burn(busy)
                elif res == nv.SENDTO_FAILED:  # counted as sent, as `send_now` counts it
                    writer.requeue(fan.scratch[: int(out[nv.O_ARG])].tobytes())
                else:  # nv.SRTP_FAILED
                    raise srtp_error(int(out[nv.O_ARG]))
            except Exception as exc:
                self.send_errors += 1
                if sub.live:  # once per connection: it leaves the fan-out at once
                    log.warning("media: sending to %s failed (%r); dropped", sub.name, exc)
                    self._drop(sub)
            i += 1
        self.forwarded += sent

    async def _fan_out_py(
        self, src: _Peer | None, packet: rtc.RtpPacket, k: int, gen: int, now_ms: int
    ) -> None:
        """`_fan_out` on the earlier send path (``direct=False``): per listener in Python."""
        seq = packet.sequence_number
        ts = packet.timestamp
        marker = packet.marker
        payload = packet.payload
        ntp = rtc.ntp_now()
        busy = _FAULT_BUSY_NS
        sent = 0
        for sub in self._subs:
            if sub is src:
                continue
            st = sub.streams[k]
            if st.gen != gen:
                st.rebase(gen, seq, ts, now_ms)
                mark = 1
            else:
                mark = marker
            out_seq = (seq + st.seq_off) & 0xFFFF
            out_ts = (ts + st.ts_off) & 0xFFFFFFFF
            if 0 < ((out_seq - st.last_seq) & 0xFFFF) < 0x8000:  # newer: a late packet never
                st.last_seq = out_seq  # moves the slot back, or the next speaker would reuse
                st.last_ts = out_ts  # its sequence number (a duplicate to the jitter buffer)
                st.last_ms = now_ms
            writer = sub.writers[k]
            try:
                if not writer.send_now(out_seq, out_ts, mark, payload, ntp):
                    self.sent_async += 1  # not a plain UDP pair (e.g. TURN): the slow path
                    await writer.write(out_seq, out_ts, mark, payload)
            except Exception as exc:
                self.send_errors += 1
                if sub.live:  # once per connection: it leaves the fan-out at once
                    log.warning("media: sending to %s failed (%r); dropped", sub.name, exc)
                    self._drop(sub)
                continue
            sent += 1
            if busy:
                _burn(busy)
        self.forwarded += sent
