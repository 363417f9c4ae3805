"""Receive-side measurement for lite listeners: no decoding, just the RTP that arrives.

Each packet a `SpeakerTrack` sends carries a marker in its Opus padding (sender, a
contiguous sequence number, the send time on the monotonic clock; see
`spacesim.client.opus`). On one machine that clock is shared by every process, so a
listener computes publisher -> listener latency directly (the records say
``clock="monotonic"``); loss is the gap in the RTP sequence numbers of each stream the
server sends (one per listen slot and connection, told apart by SSRC; the server
rewrites them contiguously, so a speaker it chose not to forward -- no free slot,
muted -- is not loss, while a packet lost on either leg is); jitter is RFC 3550's
interarrival estimate (section 6.4.1) in seconds. The aiortc jitter buffer is not
involved: `spacesim.rtc.receive_rtp_direct` hands each packet over with the time it
reached the socket, and only its payload is looked at (`spacesim.client.rtp.payload`).
Since only that time matters, a listener lets the batch reader read its socket every
`ListenerStats.read_every` s (kernel receive times), which is most of what makes it cheap.
The swarm's lite listeners (`lite_stats`) are `NativeListenerStats`: the same
accounting in machine code, where the batch reader counts their packets without
calling back into Python (`spacesim.rtc.native_rx`), read every 100 ms.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from spacesim.client.opus import read_mark_fields
from spacesim.client.rtp import payload as rtp_payload

__all__ = ["ListenerStats", "NativeListenerStats", "SenderStats", "lite_stats"]


@dataclass(slots=True)
class SenderStats:
    """What one listener received from one sender."""

    first_seq: int = -1
    last_seq: int = -1
    received: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds; the caller drains it
    jitter: float = 0.0  # RFC 3550 6.4.1 estimate, seconds
    _transit: float | None = None

    @property
    def expected(self) -> int:
        return self.last_seq - self.first_seq + 1 if self.received else 0

    @property
    def lost(self) -> int:
        return max(self.expected - self.received, 0)


@dataclass
class ListenerStats:
    """Per-sender receive statistics of one listener, fed by `on_rtp`.

    Times are on ``clock``: this process's monotonic clock, or the server's
    (`spacesim.client.clock.ClockOffset`: monotonic + ``offset_ns``). Arrival times
    come in on the monotonic clock, so ``offset_ns`` must be the one ``clock`` adds.
    """

    #: `connect_audio`'s ``read_every`` for listeners: they work from the arrival times
    #: they are given (a probe's playout too), so their sockets may be read on a timer
    read_every: ClassVar[float | None] = 0.02

    clock: Callable[[], int] = time.monotonic_ns
    offset_ns: int = 0
    senders: dict[int, SenderStats] = field(default_factory=dict)
    unmarked: int = 0
    first_audio_ns: int | None = None  # the first marked packet's arrival
    first_packet_ns: int | None = None  # the first packet's, marked or not (a mix has none)
    #: SSRC of each stream the server sends -> [first extended RTP seq, last, received]
    streams: dict[bytes, list[int]] = field(default_factory=dict)

    def on_rtp(self, slot: int, packet: bytes, arrival_ns: int | None = None) -> None:
        """The `connect_audio` callback: one decrypted RTP packet and its arrival time
        (monotonic ns; None = now). Runs for every packet: one function on purpose."""
        now = self.clock() if arrival_ns is None else arrival_ns + self.offset_ns
        if len(packet) >= 12:  # the stream's RTP sequence: loss (see the module docstring)
            seen = self.streams.get(packet[8:12])  # keyed by the SSRC's bytes
            seq16 = (packet[2] << 8) | packet[3]
            if seen is None:
                self.streams[packet[8:12]] = [seq16, seq16, 1]
                if self.first_packet_ns is None:
                    self.first_packet_ns = now
            else:
                ahead = (seq16 - seen[1]) & 0xFFFF  # extended seq: RFC 3550 A.1's wrap rule
                if ahead < 0x8000:
                    seen[1] += ahead
                seen[2] += 1
        if packet and packet[0] == 0x80:  # a plain header: no padding, extension or CSRC
            mark = read_mark_fields(packet, 12)
        else:
            payload = rtp_payload(packet)
            mark = None if payload is None else read_mark_fields(payload)
        if mark is None:
            self.unmarked += 1
            return
        sender_id, seq, t_ns = mark
        if self.first_audio_ns is None:
            self.first_audio_ns = now
        s = self.senders.get(sender_id)
        if s is None:
            s = self.senders[sender_id] = SenderStats(first_seq=seq)
        s.received += 1
        if seq > s.last_seq:
            s.last_seq = seq
        elif seq < s.first_seq:
            s.first_seq = seq
        transit = (now - t_ns) / 1e9
        s.latencies.append(transit)
        if s._transit is not None:  # J += (|D| - J) / 16, RFC 3550 6.4.1
            s.jitter += (abs(transit - s._transit) - s.jitter) / 16
        s._transit = transit

    def totals(self) -> tuple[int, int]:
        """(received, lost) over the streams: every packet the server forwarded here counts."""
        received = sum(v[2] for v in self.streams.values())
        expected = sum(v[1] - v[0] + 1 for v in self.streams.values())
        return received, max(expected - received, 0)

    def drain(self) -> tuple[list[float], list[int]]:
        """The latencies (s) since the last call, and the senders heard in between."""
        lat: list[float] = []
        heard: list[int] = []
        for sid, s in self.senders.items():
            if s.latencies:
                heard.append(sid)
                lat += s.latencies
                s.latencies = []
        return lat, heard


class NativeListenerStats:
    """`ListenerStats` for the swarm's lite listeners, kept in a row of
    `spacesim.rtc.native_rx.RxStats` instead of dicts.

    The same accounting (stream sequences, marks, latencies, jitter) in machine code:
    given this object's bound `on_rtp`, the batch reader counts each packet of a stream
    the row already knows without calling back into Python (``receive_rtp_direct``
    looks for `native_row`); `on_rtp` itself takes the rest (a stream's first packet,
    packets read outside the batch reader). Needs `native_rx.available`; see
    `lite_stats`.
    """

    #: longer than `ListenerStats.read_every`: more datagrams per ``recvmmsg`` and fewer
    #: wake-ups (~2x less CPU per packet than 20 ms); arrival times are the kernel's,
    #: and 100 ms of a listener's packets (~5-10 datagrams) fit its socket's buffer
    read_every: ClassVar[float | None] = 0.1

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns, offset_ns: int = 0) -> None:
        from spacesim.rtc import native_rx

        self.clock = clock
        self.offset_ns = offset_ns
        self._table = table = native_rx.stats()
        self.native_row = table.new_row(offset_ns)
        weakref.finalize(self, table.release, self.native_row)

    def on_rtp(self, slot: int, packet: bytes, arrival_ns: int | None = None) -> None:
        """As `ListenerStats.on_rtp`."""
        now = self.clock() if arrival_ns is None else arrival_ns + self.offset_ns
        self._table.account(self.native_row, packet, now)

    @property
    def first_audio_ns(self) -> int | None:
        return self._table.first(self.native_row, 1)

    @property
    def first_packet_ns(self) -> int | None:
        return self._table.first(self.native_row, 2)

    @property
    def unmarked(self) -> int:
        return self._table.unmarked(self.native_row)

    def totals(self) -> tuple[int, int]:
        """As `ListenerStats.totals`."""
        return self._table.totals(self.native_row)

    def drain(self) -> tuple[list[float], list[int]]:
        """As `ListenerStats.drain`."""
        return self._table.drain(self.native_row)


def lite_stats(
    clock: Callable[[], int] = time.monotonic_ns, offset_ns: int = 0
) -> ListenerStats | NativeListenerStats:
    """A lite listener's statistics: native where the native receive loop runs."""
    from spacesim.rtc import native_rx

    if native_rx.available():
        return NativeListenerStats(clock=clock, offset_ns=offset_ns)
    return ListenerStats(clock=clock, offset_ns=offset_ns)
