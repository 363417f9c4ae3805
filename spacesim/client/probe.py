"""Probe listeners: `ListenerStats` plus an Opus decode of every packet received.

A lite listener (`spacesim.client.listener.ListenerStats`) never decodes, so it cannot
tell a stream of valid but silent (or garbled) Opus from real speech. `ProbeStats`
does the same bookkeeping (latency from the marks, loss, RFC 3550 jitter) and also
feeds each received payload to a libopus decoder (PyAV, ``av.CodecContext.create(
"libopus", "r")``), one decoder per listen slot -- the server keeps each slot's RTP
stream continuous, so a slot is what a real client would decode as one stream.

The audio-quality figure, per slot and in total:

* ``frames``: 20 ms frames decoded (one per received packet; the clips and tones
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
    """`ListenerStats` that also decodes every payload; use ``on_rtp`` with `connect_audio`."""

    silence_dbfs: float = DEFAULT_SILENCE_DBFS
    slots: dict[int, SlotQuality] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._min_ms = _threshold(self.silence_dbfs)

    def on_payload(self, slot: int, payload: bytes) -> None:
        """Latency/loss as `ListenerStats` (timed before decoding), then decode."""
        ListenerStats.on_payload(self, slot, payload)
        self.decode(slot, payload)

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
            pcm = frame.to_ndarray()
            if pcm.dtype != np.int16:  # float formats: scale to the int16 range
                pcm = pcm * 32768.0
            x = pcm.astype(np.float64, copy=False).ravel()
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
