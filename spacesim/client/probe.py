"""Probe listeners: `ListenerStats` plus a jitter buffer and an Opus decode, as a client.

A lite listener (`spacesim.client.listener.ListenerStats`) never decodes, so it cannot
tell a stream of valid but silent (or garbled) Opus from real speech. `ProbeStats`
does the same bookkeeping (latency from the marks, loss, RFC 3550 jitter) and also
passes each slot's packets through aiortc's audio jitter buffer and feeds every frame
it releases to a libopus decoder (PyAV, ``av.CodecContext.create("libopus", "r")``),
one buffer and decoder per listen slot -- the server keeps each slot's RTP stream
continuous, so a slot is what a real client would decode as one stream.

The audio-quality figure, per slot and in total:

* ``frames``: 20 ms frames decoded (one per released packet; the clips and tones
  are 20 ms per packet, so normally ``frames == packets - decode_errors``);
* ``audible``: frames whose RMS is above ``silence_dbfs`` (default -60 dBFS, i.e.
  RMS ~33 on the int16 scale);
* ``audible_fraction = audible / frames``;
* ``decode_errors``: payloads libopus refused (an empty payload counts as an error
  and is not fed to the decoder, since an empty packet means "flush" to FFmpeg).

What the figure is and is not: it says that what arrived decodes to sound, not that
the sound is the right sound. Speech clips contain pauses, so even a perfect stream
is not 100 % audible: compare with :func:`reference_audible_fraction` of the clip
the sender plays (a tone is ~100 %). Lost packets are not concealed (no PLC frames
are generated) and so are not counted as frames at all -- loss is in ``totals()``.
When the speaker assigned to a slot changes, the slot's decoder state carries over
(as it would for a real client); the first frame may be slightly off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from spacesim.client.listener import ListenerStats
from spacesim.client.opus import read_mark_fields
from spacesim.client.rtp import header as rtp_header
from spacesim.client.rtp import payload as rtp_payload
from spacesim.rtc import AudioJitterBuffer

__all__ = ["ProbeStats", "SlotQuality", "new_decoder", "reference_audible_fraction"]

SAMPLE_RATE = 48_000
DEFAULT_SILENCE_DBFS = -60.0


def new_decoder() -> Any:
    """A libopus decoder (PyAV) for 48 kHz mono output."""
    ctx: Any = av.CodecContext.create("libopus", "r")
    ctx.sample_rate = SAMPLE_RATE
    ctx.layout = "mono"
    return ctx


def _threshold(silence_dbfs: float) -> float:
    """Mean square (int16 scale) above which a frame is audible."""
    rms = 32768.0 * 10 ** (silence_dbfs / 20)
    return rms * rms


@dataclass
class SlotQuality:
    """Decode results of one listen slot."""

    frames: int = 0
    audible: int = 0
    decode_errors: int = 0
    _decoder: Any = field(default=None, repr=False)

    @property
    def audible_fraction(self) -> float:
        return self.audible / self.frames if self.frames else math.nan


@dataclass
class ProbeStats(ListenerStats):
    """`ListenerStats` plus what a real client hears; use ``on_rtp`` with `connect_audio`.

    Each slot's packets go through aiortc's own audio jitter buffer (``JitterBuffer(
    capacity=16, prefetch=4)``, as `aiortc.rtcrtpreceiver.RTCRtpReceiver` builds it;
    through `spacesim.rtc.AudioJitterBuffer`, which registers the internals it relies on),
    and each frame it releases is decoded, as an aiortc listener would. So a probe
    reports three delays: ``audio_latency`` at arrival (network + server, as lite
    listeners do), the time the buffer held the frame (`playout`'s first item: the
    client's buffering, ~4 frames = ~80 ms), and mouth-to-ear (the marker's send time
    to the end of decoding: the sum of the two plus decoding).
    """

    silence_dbfs: float = DEFAULT_SILENCE_DBFS
    prefetch: int = 4
    slots: dict[int, SlotQuality] = field(default_factory=dict)
    #: (buffer hold, mouth-to-ear) in seconds per played frame; the caller drains it
    playout: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._min_ms = _threshold(self.silence_dbfs)
        self._buffers: dict[int, tuple[AudioJitterBuffer, dict[int, int]]] = {}

    def on_rtp(self, slot: int, packet: bytes, arrival_ns: int | None = None) -> None:
        """Arrival (latency, loss, jitter), then the jitter buffer; decode what it releases."""
        h = rtp_header(packet)
        payload = rtp_payload(packet)
        if h is None or payload is None:
            self.unmarked += 1
            return
        now = self.clock() if arrival_ns is None else arrival_ns + self.offset_ns
        ListenerStats.on_rtp(self, slot, packet, now - self.offset_ns)
        self.play(slot, h.sequence_number, h.timestamp, payload, now)

    def play(self, slot: int, seq: int, ts: int, payload: bytes, now: int) -> None:
        """One packet, arrived at ``now``, into ``slot``'s jitter buffer; a released frame
        is decoded and timed."""
        entry = self._buffers.get(slot)
        if entry is None:
            entry = self._buffers[slot] = (AudioJitterBuffer(16, self.prefetch), {})
        jb, arrivals = entry
        arrivals[ts] = now
        frame = jb.add(seq, ts, payload)
        if frame is None:
            return
        frame_ts, data = frame
        arrived = arrivals.pop(frame_ts, now)
        if len(arrivals) > 64:  # frames the buffer skipped never come out: forget them
            for old in [t for t in arrivals if (t - frame_ts) & 0x80000000]:
                del arrivals[old]
        # aiortc's receiver hands a released frame to its decoder thread at once, so it
        # is played when the packet that released it arrived, plus decoding: not when
        # this process got round to it (the batch reader may call back 20 ms later)
        started = self.clock()
        self.decode(slot, data)
        played = now + (self.clock() - started)
        mark = read_mark_fields(data)
        if mark is not None:
            self.playout.append(((now - arrived) / 1e9, (played - mark[2]) / 1e9))

    def decode(self, slot: int, payload: bytes) -> None:
        """Decode one Opus payload received on ``slot`` and update its `SlotQuality`."""
        q = self.slots.get(slot)
        if q is None:
            q = self.slots[slot] = SlotQuality(_decoder=new_decoder())
        if not payload:
            q.decode_errors += 1
            return
        try:
            decoded = q._decoder.decode(av.Packet(payload))
        except av.FFmpegError:
            q.decode_errors += 1
            return
        for frame in decoded:
            if frame.format.name == "s16" and len(frame.planes) == 1:  # libopus's output
                # (the plane may be padded beyond the samples: read only those)
                n = frame.samples * len(frame.layout.channels)
                x = np.frombuffer(frame.planes[0], np.int16, n).astype(np.float32)
            else:
                pcm = frame.to_ndarray()
                if pcm.dtype != np.int16:  # float formats: scale to the int16 range
                    pcm = pcm * 32768.0
                x = pcm.astype(np.float32).ravel()
            q.frames += 1
            if x.size and float(np.dot(x, x)) / x.size > self._min_ms:
                q.audible += 1

    def quality(self) -> tuple[int, int, int]:
        """(frames, audible, decode_errors) over all slots."""
        qs = self.slots.values()
        return (
            sum(q.frames for q in qs),
            sum(q.audible for q in qs),
            sum(q.decode_errors for q in qs),
        )

    @property
    def audible_fraction(self) -> float:
        frames, audible, _ = self.quality()
        return audible / frames if frames else math.nan


def reference_audible_fraction(
    packets: Iterable[bytes], silence_dbfs: float = DEFAULT_SILENCE_DBFS
) -> float:
    """The audible fraction of a clip decoded locally: what a perfect stream scores."""
    probe = ProbeStats(silence_dbfs=silence_dbfs)
    for p in packets:
        probe.decode(0, p)
    return probe.audible_fraction
