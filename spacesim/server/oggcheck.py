"""Checking an uploaded Ogg/Opus file as it streams in (voice posts and voice DMs).

Limits are enforced on the audio itself, not on what headers claim: every page's CRC
(RFC 3533), one logical stream with pages in sequence, the OpusHead and OpusTags
headers (RFC 7845 §5), every audio packet's duration from its TOC byte (RFC 6716 §3.1)
and the pages' granule positions against the packets they end. The duration counted is
the packets' (what a player plays), so a file cannot lie about its length.
"""

from __future__ import annotations

import struct

from spacesim.server.recording import RATE, ogg_crc, opus_samples

__all__ = ["AudioError", "OggOpusCheck"]

_HEAD = struct.Struct("<4sBBqIIIB")
#: RFC 6716 §3.2.5: a packet holds at most 120 ms of audio.
_MAX_PACKET_SAMPLES = 5760


class AudioError(ValueError):
    """The upload is not acceptable audio; `code` is the protocol's error code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class OggOpusCheck:
    """Feed the bytes as they arrive; `finish` says how long the audio is.

    Refuses (`AudioError`) as soon as the bytes say so: past `max_bytes` (``too_large``),
    past `max_s` seconds of audio (``audio_too_long``) or malformed (``bad_audio``).
    """

    def __init__(self, max_bytes: int, max_s: float) -> None:
        self.max_bytes = max_bytes
        self.max_samples = round(max_s * RATE)
        self.max_s = max_s
        self.size = 0
        self._buf = bytearray()
        self._pages = 0
        self._serial = 0
        self._partial = b""  # a packet continued on the next page
        self._packets = 0  # packets completed (0: OpusHead, 1: OpusTags, then audio)
        self.samples = 0  # of the audio packets completed
        self.pre_skip = 0
        self.channels = 0
        self._eos = False

    def _bad(self, reason: str) -> AudioError:
        return AudioError("bad_audio", reason)

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise AudioError("too_large", f"the audio is over {self.max_bytes:,} bytes")
        self._buf += data
        while self._page():
            pass

    def _page(self) -> bool:
        buf = self._buf
        if len(buf) < 27:
            return False
        capture, version, flags, granule, serial, seq, crc, n = _HEAD.unpack_from(buf)
        where = f"page {self._pages}"
        if capture != b"OggS":
            raise self._bad(f"not an Ogg stream: no page starts at byte {self.size - len(buf)}")
        if version != 0:
            raise self._bad(f"{where}: unknown Ogg version {version}")
        if len(buf) < 27 + n:
            return False
        lacing = bytes(buf[27 : 27 + n])
        end = 27 + n + sum(lacing)
        if len(buf) < end:
            return False
        page = bytearray(buf[:end])
        del buf[:end]
        page[22:26] = b"\0\0\0\0"
        if ogg_crc(bytes(page)) != crc:
            raise self._bad(f"{where}: CRC mismatch (damaged)")
        if self._eos:
            raise self._bad("data after the end-of-stream page")
        if self._pages == 0:
            if not flags & 0x02:
                raise self._bad("the first page is not a beginning of stream")
            self._serial = serial
        elif serial != self._serial:
            raise self._bad("more than one logical stream (only one Opus stream is allowed)")
        elif flags & 0x02:
            raise self._bad(f"{where}: a second beginning of stream")
        if seq != self._pages:
            raise self._bad(f"{where}: sequence number {seq} (pages missing or out of order)")
        if bool(flags & 0x01) != bool(self._partial):
            raise self._bad(f"{where}: continuation flag disagrees with the previous page")
        self._pages += 1
        self._eos = bool(flags & 0x04)
        body = memoryview(page)[27 + n :]
        start = cur = 0
        ended = False
        for v in lacing:
            cur += v
            if v < 255:
                self._packet(self._partial + bytes(body[start : start + cur]))
                self._partial = b""
                start += cur
                cur = 0
                ended = True
        if cur:
            self._partial += bytes(body[start : start + cur])
        if ended and self._packets > 2 and granule != -1:
            # RFC 7845 §4: a page's granule is the samples decoded up to its last whole
            # packet; only the last page may end earlier (end trimming)
            if granule > self.samples or (not self._eos and granule != self.samples):
                raise self._bad(
                    f"{where}: granule position {granule} disagrees with the "
                    f"{self.samples} samples of its packets"
                )
            if self._eos:
                self.samples = granule
        return True

    def _packet(self, packet: bytes) -> None:
        k = self._packets
        self._packets += 1
        if k == 0:
            if len(packet) < 19 or not packet.startswith(b"OpusHead"):
                raise self._bad("the first packet is not an OpusHead (not Opus audio)")
            if packet[8] >> 4 != 0:
                raise self._bad(f"unknown OpusHead version {packet[8]}")
            self.channels = packet[9]
            self.pre_skip = struct.unpack_from("<H", packet, 10)[0]
            if self.channels == 0 or (packet[18] == 0 and self.channels > 2):
                raise self._bad(f"OpusHead: {self.channels} channels")
            return
        if k == 1:
            if not packet.startswith(b"OpusTags"):
                raise self._bad("the second packet is not OpusTags")
            return
        samples = opus_samples(packet)
        if not 0 < samples <= _MAX_PACKET_SAMPLES:
            raise self._bad(f"audio packet {k - 2} is not a valid Opus packet")
        self.samples += samples
        if self.samples - self.pre_skip > self.max_samples:
            raise AudioError("audio_too_long", f"the audio is longer than {self.max_s:g} s")

    def finish(self) -> float:
        """The audio's duration in seconds, once every byte is in; refuses a truncated file."""
        if self._buf or self._partial:
            raise self._bad("truncated: the last page (or packet) is incomplete")
        if self._packets < 3:
            raise self._bad("no audio: the stream ends before its first audio packet")
        if not self._eos:
            raise self._bad("truncated: the stream has no end-of-stream page")
        return max(0, self.samples - self.pre_skip) / RATE
