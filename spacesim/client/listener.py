"""Receive-side measurement for lite listeners: no decoding, just the RTP that arrives.

Each packet a `SpeakerTrack` sends carries a marker in its Opus padding (sender, a
contiguous sequence number, the send time on the monotonic clock; see
`spacesim.client.opus`). On one machine that clock is shared by every process, so a
listener computes publisher -> listener latency directly (the records say
``clock="monotonic"``); loss is the gap between the sequence numbers a sender used and
the ones that arrived; jitter is RFC 3550's interarrival estimate (section 6.4.1) in
seconds. The aiortc jitter buffer is not involved: `spacesim.rtc.receive_rtp_direct`
hands each packet over from the socket's callback as it arrives, and only its payload
is looked at (`spacesim.client.rtp.payload`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from spacesim.client.opus import read_mark_fields
from spacesim.client.rtp import payload as rtp_payload

__all__ = ["ListenerStats", "SenderStats"]


@dataclass
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
    """Per-sender receive statistics of one listener, fed by `on_rtp`."""

    clock: Callable[[], int] = time.monotonic_ns
    senders: dict[int, SenderStats] = field(default_factory=dict)
    unmarked: int = 0
    first_audio_ns: int | None = None

    def on_rtp(self, slot: int, packet: bytes) -> None:
        """The `connect_audio` callback: one decrypted RTP packet, just arrived."""
        payload = rtp_payload(packet)
        if payload is None:
            self.unmarked += 1
            return
        self.on_payload(slot, payload)

    def on_payload(self, slot: int, payload: bytes) -> None:
        """One arriving RTP payload (an Opus packet) of listen slot ``slot``."""
        now = self.clock()
        mark = read_mark_fields(payload)
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
        """(received, lost) over all senders."""
        return (
            sum(s.received for s in self.senders.values()),
            sum(s.lost for s in self.senders.values()),
        )
