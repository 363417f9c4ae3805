"""aiortc's audio jitter buffer, fed with packets we build ourselves (for probe listeners).

``aiortc.jitterbuffer.JitterBuffer`` is not public API: it takes ``RtpPacket`` s and
reads ``sequence_number``, ``timestamp`` and the private ``_data`` (the payload it
joins into a frame) off them (aiortc/jitterbuffer.py ``JitterBuffer.add`` and
``_remove_frame``). A probe has only the packet's bytes, so it hands the buffer a
slotted stand-in with just those three fields -- cheaper than ``RtpPacket.parse`` --
and this module registers each of them with the upgrade guard.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame

from spacesim.rtc import internals as _i

__all__ = ["AudioJitterBuffer"]

_i.register(
    __name__,
    _i.attr(JitterBuffer, "add", "aiortc/jitterbuffer.py JitterBuffer.add"),
    _i.read(JitterBuffer, "sequence_number", "aiortc/jitterbuffer.py reads packet.sequence_number"),
    _i.read(JitterBuffer, "timestamp", "aiortc/jitterbuffer.py reads packet.timestamp"),
    _i.read(JitterBuffer, "_data", "aiortc/jitterbuffer.py reads packet._data"),
    _i.assigned(JitterFrame, "data", "aiortc/jitterbuffer.py JitterFrame.data"),
    _i.assigned(JitterFrame, "timestamp", "aiortc/jitterbuffer.py JitterFrame.timestamp"),
)


class _Packet:
    """What aiortc's `JitterBuffer` reads of a packet."""

    __slots__ = ("_data", "sequence_number", "timestamp")

    def __init__(self, seq: int, ts: int, data: bytes) -> None:
        self.sequence_number = seq
        self.timestamp = ts
        self._data = data


class AudioJitterBuffer:
    """aiortc's audio jitter buffer for one RTP stream, as ``RTCRtpReceiver`` builds it
    (``JitterBuffer(capacity=16, prefetch=4)``, aiortc/rtcrtpreceiver.py)."""

    __slots__ = ("_jb",)

    def __init__(self, capacity: int = 16, prefetch: int = 4) -> None:
        self._jb = JitterBuffer(capacity=capacity, prefetch=prefetch)

    def add(self, seq: int, ts: int, payload: bytes) -> tuple[int, bytes] | None:
        """One packet in; the (timestamp, payload) of the frame it releases, if any."""
        _, frame = self._jb.add(_Packet(seq, ts, payload))  # type: ignore[arg-type]
        return None if frame is None else (frame.timestamp, frame.data)
