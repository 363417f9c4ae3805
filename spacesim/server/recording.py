"""Recording a space to Ogg/Opus by stream copy, and cutting clips from it.

Why stream copy: decoding and re-encoding every speaker would cost the server a codec
per speaker; the Opus packets the speakers send are written as they are (RFC 7845
encapsulation in Ogg pages, RFC 3533), so a recorded packet costs one list append on
the media path and a few bytes of page building later.

One logical stream per space
----------------------------
A single Opus stream carries one packet per instant, so speakers are not mixed: they
are interleaved by time. The recording holds a *floor*: the speaker whose packets it
writes. Another speaker takes the floor only with a voiced packet (more than
`VOICED_BYTES` bytes: Opus spends a few bytes on silence; nothing is decoded) once the
floor's speaker has sent nothing voiced for `HOLD_MS`; until then their packets are
left out of the recording (counted as ``overlap_dropped``; listeners hear them live as
usual). Each packet is placed at its arrival time on the recording's timeline: a gap
of more than `GAP_MS` (nobody heard, e.g. everyone muted) is filled with Opus silence
frames (`SILENCE`, 20 ms of digital silence each), so the file's clock is the space's.
The timeline starts at the first packet heard after the recording starts, and a stop
pauses it: a restart continues the same file where it stopped, without the pause.

Durability
----------
Packets are buffered in memory (`Track.buf`, appended by the media loop) and written
as whole Ogg pages by one writer thread every `FLUSH_S` seconds (and when a recording
stops or a clip is cut). A page is written complete, so a killed server (kill -9)
leaves a file that plays up to its last flushed page; a partial page at the end (a
crash in the middle of a write) is cut off when the recording is resumed. Nothing is
fsynced: the file survives the process, not a power loss of the last seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from prometheus_client import Counter

from spacesim.protocol import CLIP_RETENTION_S  # expired clips are deleted (files, rows)
from spacesim.server.metrics import REGISTRY
from spacesim.server.room import RateLimiter

__all__ = [
    "CLIPS_PER_USER",
    "CLIP_MAX_S",
    "CLIP_RETENTION_S",
    "FLUSH_S",
    "SILENCE",
    "Clip",
    "OggOpusWriter",
    "Recordings",
    "Track",
    "Written",
    "ogg_crc",
    "opus_samples",
    "read_packets",
    "scan",
]

log = logging.getLogger("spacesim.server.recording")

RATE = 48_000  # Ogg Opus granule positions count 48 kHz samples (RFC 7845 §4)
FRAME = 960  # 20 ms
#: Seconds between two writes of a recording's buffered packets (the kill -9 loss bound).
FLUSH_S = 1.0
#: A gap on the timeline longer than this is filled with silence frames.
GAP_MS = 60
#: A speaker keeps the floor this long after their last voiced packet.
HOLD_MS = 300
#: An Opus packet this size or smaller counts as silence (no decoding: its size says it).
VOICED_BYTES = 12
#: 20 ms of digital silence: a CELT-only fullband 20 ms frame (TOC 0xF8) whose range
#: coder bytes decode to silence; what WebRTC stacks send for muted audio.
SILENCE = b"\xf8\xff\xfe"
#: A packet that would land this far ahead of its arrival time is left out (a burst).
AHEAD_MS = 1000
#: The longest clip (seconds), and how long before the end of a live recording a clip
#: may start (the "last 30 s").
CLIP_MAX_S = 30.0
#: Clips a user may cut: (per second, burst) -- 10 a minute, 5 at once.
CLIPS_PER_USER = (10 / 60, 5.0)
#: Seconds between two sweeps of expired clips (the first one at startup).
EXPIRY_SWEEP_S = 3600.0

#: Prometheus counters of every recording of the server (thread-safe: the writer bumps them).
RECORDED = Counter(
    "spacesim_recording_packets", "Opus packets written to recordings", registry=REGISTRY
)
RECORDED_BYTES = Counter(
    "spacesim_recording_bytes", "Bytes written to recording files", registry=REGISTRY
)
SILENCE_FRAMES = Counter(
    "spacesim_recording_silence_frames", "Silence frames filling recording gaps", registry=REGISTRY
)
LEFT_OUT = Counter(
    "spacesim_recording_left_out",
    "Packets left out of a recording (another speaker held the floor, or too early)",
    registry=REGISTRY,
)
CLIPS_CUT = Counter("spacesim_clips_cut", "Clips cut", registry=REGISTRY)
REPLAYS = Counter("spacesim_replays", "WebRTC replays started", registry=REGISTRY)

# --------------------------------------------------------------------------- Ogg


def _bitrev_table() -> bytes:
    return bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


_REV = _bitrev_table()


def ogg_crc(data: bytes) -> int:
    """Ogg's page CRC (RFC 3533 §6: polynomial 0x04c11db7, not reflected, init 0, no
    final xor), computed with zlib's reflected CRC-32 on bit-reversed bytes: C speed."""
    # zlib.crc32(d, v) runs from register v ^ 0xffffffff and returns register ^ 0xffffffff:
    # start 0xffffffff gives register 0, as Ogg's; the result's bits come out reversed.
    reg = zlib.crc32(data.translate(_REV), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reg:032b}"[::-1], 2)


def _toc_samples(toc: int, count_byte: int) -> int:
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    count = 1 if code == 0 else 2 if code < 3 else count_byte & 0x3F
    return frame * count


#: Samples by TOC byte for one- and two-frame packets (codes 0-2); -1: code 3 (the
#: frame count is in the second byte). A table: this runs for every recorded packet.
_SAMPLES = tuple(-1 if toc & 3 == 3 else _toc_samples(toc, 0) for toc in range(256))


def opus_samples(packet: bytes) -> int:
    """Samples (at 48 kHz) an Opus packet decodes to, from its TOC byte (RFC 6716 §3.1)."""
    if not packet:
        return 0
    n = _SAMPLES[packet[0]]
    if n >= 0:
        return n
    return _toc_samples(packet[0], packet[1]) if len(packet) > 1 else 0


_PAGE_HEAD = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, n


def _page(flags: int, granule: int, serial: int, seq: int, packets: list[bytes]) -> bytes:
    lacing = bytearray()
    for p in packets:
        n = len(p)
        lacing += b"\xff" * (n // 255)
        lacing.append(n % 255)
    head = _PAGE_HEAD.pack(b"OggS", 0, flags, granule, serial, seq, 0, len(lacing))
    page = bytearray(head + lacing + b"".join(packets))
    struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
    return bytes(page)


def _opus_head(channels: int = 2) -> bytes:
    # RFC 7845 §5.1: version 1, channels, pre-skip 0 (the packets come from many
    # encoders: there is no one encoder delay to skip), input rate, gain 0, family 0
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 0, RATE, 0, 0)


def _opus_tags(comments: list[str]) -> bytes:
    vendor = b"spacesim"
    out = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", len(comments))
    for c in comments:
        raw = c.encode()
        out += struct.pack("<I", len(raw)) + raw
    return out


class OggOpusWriter:
    """Ogg pages of one Opus logical stream, appended to a file.

    Each `write` turns a batch of packets into whole pages (never a packet split over
    two pages) written with one call; `resume` continues a file written before.
    """

    def __init__(self, f: BinaryIO, serial: int, seq: int = 0, granule: int = 0) -> None:
        self.f = f
        self.serial = serial
        self.seq = seq
        self.granule = granule
        self.bytes = 0

    @classmethod
    def create(cls, path: Path, comments: list[str] | None = None) -> OggOpusWriter:
        """A new file with the two Opus header pages, flushed."""
        f = open(path, "wb")  # noqa: SIM115  # kept open for appends; closed by close()
        w = cls(f, secrets.randbits(32))
        f.write(_page(0x02, 0, w.serial, 0, [_opus_head()]))
        f.write(_page(0x00, 0, w.serial, 1, [_opus_tags(comments or [])]))
        f.flush()
        w.seq = 2
        w.bytes = f.tell()
        return w

    @classmethod
    def resume(cls, path: Path) -> OggOpusWriter:
        """Continue a file: cut any partial last page off, go on after the last whole one."""
        info = scan(path)
        f = open(path, "r+b")  # noqa: SIM115
        f.truncate(info.valid_bytes)
        f.seek(info.valid_bytes)
        w = cls(f, info.serial, info.next_seq, info.granule)
        w.bytes = info.valid_bytes
        return w

    def write(self, packets: list[bytes], eos: bool = False) -> None:
        """Pages for `packets` (granule: the samples they end at), written and flushed.

        Whatever the batch, a page holds at most 255 lacing values and about 16 KiB.
        """
        out: list[bytes] = []
        page: list[bytes] = []
        segs = 0
        size = 0
        granule = self.granule
        for p in packets:
            n = len(p) // 255 + 1
            if page and (segs + n > 255 or size + len(p) > 16_384):
                out.append(_page(0, granule, self.serial, self.seq, page))
                self.seq += 1
                page, segs, size = [], 0, 0
            page.append(p)
            segs += n
            size += len(p)
            granule += opus_samples(p)
        if page or eos:
            out.append(_page(0x04 if eos else 0, granule, self.serial, self.seq, page))
            self.seq += 1
        self.granule = granule
        if out:
            data = b"".join(out)
            self.f.write(data)
            self.f.flush()  # to the kernel: a killed process loses nothing written
            self.bytes += len(data)
            RECORDED_BYTES.inc(len(data))

    def close(self) -> None:
        self.f.close()


@dataclass(frozen=True)
class ScanInfo:
    serial: int
    next_seq: int
    granule: int
    valid_bytes: int


def _pages(f: BinaryIO) -> Iterator[tuple[int, int, int, bytes, bytes, int]]:
    """(granule, serial, seq, lacing, body, end offset) of each whole page, in order."""
    while True:
        head = f.read(27)
        if len(head) < 27 or head[:4] != b"OggS":
            return
        _, _, _, granule, serial, seq, _, n = _PAGE_HEAD.unpack(head)
        lacing = f.read(n)
        if len(lacing) < n:
            return
        size = sum(lacing)
        body = f.read(size)
        if len(body) < size:
            return
        yield granule, serial, seq, lacing, body, f.tell()


def scan(path: Path) -> ScanInfo:
    """The stream's serial, next page number, last granule and whole-page length."""
    serial = seq = granule = end = 0
    with open(path, "rb") as f:
        for g, s, q, _, _, e in _pages(f):
            serial, seq, end = s, q + 1, e
            if g >= 0:
                granule = g
    if end == 0:
        raise ValueError(f"{path} holds no whole Ogg page")
    return ScanInfo(serial, seq, granule, end)


def _split(lacing: bytes, body: bytes) -> list[bytes]:
    """A page's packets (we never continue a packet over pages: none is left open)."""
    out: list[bytes] = []
    start = cur = 0
    for v in lacing:
        cur += v
        if v < 255:
            out.append(body[start : start + cur])
            start += cur
            cur = 0
    return out


def read_packets(path: Path, start: int = 0, end: int | None = None) -> list[tuple[int, bytes]]:
    """Audio packets with their start sample, those starting in [start, end) samples.

    Pages wholly before `start` are skipped by their granule without splitting them.
    """
    out: list[tuple[int, bytes]] = []
    with open(path, "rb") as f:
        for k, (granule, _, _, lacing, body, _) in enumerate(_pages(f)):
            if k < 2 or granule < start:  # OpusHead, OpusTags; pages ending before start
                continue
            packets = _split(lacing, body)
            pos = granule - sum(opus_samples(p) for p in packets)
            for p in packets:
                if pos >= start and (end is None or pos < end):
                    out.append((pos, p))
                pos += opus_samples(p)
            if end is not None and pos >= end:
                break
    return out


# --------------------------------------------------------------------------- tracks


class Written:
    """What a server's recordings wrote: counters the writer thread adds to (its only
    writer) and the server's records read once a second (``spacesim serve --record``:
    ``recording_bytes``, ``packets_recorded``), so that `spacesim calibrate` can fit
    ``server.recorded_packet_bytes``. Page bytes count from after the Opus header pages."""

    __slots__ = ("bytes", "clip_bytes", "packets", "silence")

    def __init__(self) -> None:
        self.packets = 0  # speakers' packets written (silence fill not counted)
        self.silence = 0  # silence frames written to fill gaps
        self.bytes = 0  # bytes of the pages holding them
        self.clip_bytes = 0  # bytes of clip files cut

    def add(self, packets: int, silence: int, size: int) -> None:
        self.packets += packets
        self.silence += silence
        self.bytes += size

    def stats(self) -> dict[str, float]:
        return {
            "packets": float(self.packets),
            "silence": float(self.silence),
            "bytes": float(self.bytes),
            "clip_bytes": float(self.clip_bytes),
        }


class Track:
    """One space's recording while the server runs: the buffer the media loop appends
    to, and the timeline and file the writer thread keeps."""

    def __init__(self, space: str, path: Path, written: Written | None = None) -> None:
        self.space = space
        self.path = path
        self.written = written if written is not None else Written()
        # (arrival ms, speaker, Opus payload): the media loop's only work per packet
        self.buf: list[tuple[int, str, bytes]] = []
        self.active = False  # recording (not paused)
        self.writer: OggOpusWriter | None = None
        self.t0_ms: int | None = None  # arrival ms of timeline sample 0 (this segment)
        self.owner: str | None = None
        self.voiced_ms = -(1 << 62)
        self.packets = 0
        self.silence = 0
        self.overlap_dropped = 0
        self.late_dropped = 0
        self.cpu_s = 0.0  # the writer thread's CPU time spent on this track

    @property
    def samples(self) -> int:
        return self.writer.granule if self.writer is not None else 0

    def take(self) -> list[tuple[int, str, bytes]]:
        """The packets buffered since the last take (on the event loop's thread)."""
        batch, self.buf = self.buf, []
        return batch

    def open(self) -> None:
        """(writer thread) Open or resume the file."""
        if self.writer is not None:
            return
        if self.path.exists() and self.path.stat().st_size > 0:
            try:
                self.writer = OggOpusWriter.resume(self.path)
                return
            except ValueError:
                log.warning("recording %s is unreadable; started again", self.path)
        self.writer = OggOpusWriter.create(self.path, [f"SPACE={self.space}"])

    def write(self, batch: list[tuple[int, str, bytes]], new_segment: bool = False) -> None:
        """(writer thread) Lay a batch out on the timeline and write it as pages."""
        began = time.thread_time()
        try:
            self._write(batch, new_segment)
        finally:
            self.cpu_s += time.thread_time() - began

    def _write(self, batch: list[tuple[int, str, bytes]], new_segment: bool) -> None:
        self.open()
        w = self.writer
        assert w is not None
        size = w.bytes  # after open: a resumed file's earlier bytes are not written now
        if new_segment:
            self.t0_ms = None
        pos = w.granule
        out: list[bytes] = []
        before = (self.packets, self.silence, self.overlap_dropped + self.late_dropped)
        for ms, who, payload in batch:
            voiced = len(payload) > VOICED_BYTES
            if self.owner is None:
                self.owner = who
            elif who != self.owner:
                if not (voiced and ms - self.voiced_ms >= HOLD_MS):
                    self.overlap_dropped += 1
                    continue
                self.owner = who
            if voiced:
                self.voiced_ms = ms
            if self.t0_ms is None:
                self.t0_ms = ms - pos // 48
            target = (ms - self.t0_ms) * 48
            if target - pos > GAP_MS * 48:
                n = (target - pos) // FRAME
                out.extend([SILENCE] * n)
                pos += n * FRAME
                self.silence += n
            elif pos - target > AHEAD_MS * 48:
                self.late_dropped += 1
                continue
            out.append(payload)
            pos += opus_samples(payload)
            self.packets += 1
        w.write(out)
        self.written.add(self.packets - before[0], self.silence - before[1], w.bytes - size)
        RECORDED.inc(self.packets - before[0])
        SILENCE_FRAMES.inc(self.silence - before[1])
        LEFT_OUT.inc(self.overlap_dropped + self.late_dropped - before[2])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _write_all(work: list[tuple[Track, list[tuple[int, str, bytes]], bool]]) -> None:
    """(writer thread) Write each track's batch; one failing file does not stop the rest."""
    for track, batch, new in work:
        try:
            track.write(batch, new)
        except Exception:
            log.exception("writing the recording of %s failed", track.space)


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path
    start_s: float
    duration_s: float
    bytes: int


def write_clip(src: Path, dst: Path, start_s: float, duration_s: float) -> Clip:
    """Copy the packets of [start, start + duration) of `src` into a new Ogg/Opus file."""
    start = int(start_s * RATE)
    packets = read_packets(src, start, start + int(duration_s * RATE))
    w = OggOpusWriter.create(dst, ["CLIP=1"])
    try:
        w.write([p for _, p in packets], eos=True)
    finally:
        w.close()
    first = packets[0][0] if packets else start
    return Clip(dst.stem, dst, first / RATE, w.granule / RATE, dst.stat().st_size)


# --------------------------------------------------------------------------- manager


class Recordings:
    """Every recording of one server: which spaces record, the writer thread, clips.

    The room's events drive it (`on_event`, a `Room` sink): ``recording_started`` and
    ``recording_stopped`` (the room persisted them already) and ``space_ended``.
    `attach` hands a space's `Track` to its media room, whose forwarding loop appends
    each heard packet to ``track.buf``.
    """

    def __init__(
        self,
        root: Path,
        store: Any,
        media: dict[str, Any],
        flush_s: float = FLUSH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.store = store
        self.media = media  # the server's space id -> MediaRoom
        self.flush_s = flush_s
        self.clock = clock
        self.tracks: dict[str, Track] = {}
        self.written = Written()  # every track's and clip's bytes (`stats`)
        self._fresh: set[str] = set()  # tracks whose next write starts a segment
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording")
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self.cuts = RateLimiter(*CLIPS_PER_USER)  # clips cut, per user
        self.replays: Any = None  # spacesim.server.replay.Replays, made on first use

    def path(self, space: str) -> Path:
        return self.root / f"{space}.opus"

    def clip_path(self, clip_id: str) -> Path:
        return self.root / "clips" / f"{clip_id}.opus"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """The periodic flush (call on the running loop)."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "clips").mkdir(exist_ok=True)
        self._task = asyncio.ensure_future(self._flush_loop())

    def recover(self, live: set[str]) -> None:
        """After a restart: recordings of spaces that came back go on; the others (the
        space ended meanwhile, or is gone) are marked stopped with what their file holds."""
        for rec in self.store.recordings_in_progress():
            if rec.space in live:
                self.resume(rec.space)
                continue
            path = self.path(rec.space)
            size, dur = 0, 0.0
            with contextlib.suppress(OSError, ValueError):
                info = scan(path)
                size, dur = info.valid_bytes, info.granule / RATE
            self.store.set_recording(rec.space, False)
            self.store.set_recording_size(rec.space, size, dur)

    async def close(self) -> None:
        """Stop flushing; write what is buffered; close the files."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.replays is not None:
            await self.replays.close()
        await self.settle()  # stops under way (a space just ended) close their files first
        for space in list(self.tracks):  # still recording: it goes on after the restart
            await self._stop(space, keep_status=True)
        self._io.shutdown(wait=True)

    async def _flush_loop(self) -> None:
        swept = -math.inf
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
                if time.monotonic() - swept >= EXPIRY_SWEEP_S:  # at start, then hourly
                    swept = time.monotonic()
                    self.expire()
            except Exception:
                log.exception("recording flush (or clip expiry) failed")

    async def flush(self, space: str | None = None) -> None:
        """Write the buffered packets of one track (or all) in the writer thread."""
        tracks = [self.tracks[space]] if space in self.tracks else []
        if space is None:
            tracks = list(self.tracks.values())
        work = []
        for t in tracks:
            if t.buf or t.space in self._fresh:
                work.append((t, t.take(), t.space in self._fresh))
                self._fresh.discard(t.space)
        if work:  # one hand-over to the writer thread for all of them
            await asyncio.get_running_loop().run_in_executor(self._io, _write_all, work)

    # ------------------------------------------------------------------ events

    def on_event(self, msg: dict[str, Any]) -> None:
        """A `Room` sink: start, stop and end recordings as the space's events say."""
        kind = msg.get("kind")
        if kind == "recording_started":
            self._begin(str(msg.get("space")))
        elif kind in ("recording_stopped", "space_ended"):
            space = str(msg.get("space"))
            if space in self.tracks:
                self._later(self._stop(space))

    async def settle(self) -> None:
        """Wait for the stops under way (their last pages) to be written."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def _later(self, coro: Any) -> None:
        fut = asyncio.ensure_future(coro)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)

    def resume(self, space: str) -> None:
        """The space came back in this process (a restart, or a cluster node taking over
        a dead origin's space): its recording goes on if it was being written, in a new
        segment of the same file (nodes that share the database share its directory)."""
        rec = self.store.get_recording(space)
        if rec is not None and rec.status == "recording":
            self._begin(space)

    def _begin(self, space: str) -> None:
        track = self.tracks.get(space)
        if track is None:
            track = self.tracks[space] = Track(space, self.path(space), self.written)
        track.active = True
        self._fresh.add(space)
        media = self.media.get(space)
        if media is not None:
            media.recorder = track

    def attach(self, space: str, media: Any) -> None:
        """A media room was created: it records if its space does."""
        track = self.tracks.get(space)
        media.recorder = track if track is not None and track.active else None

    async def _stop(self, space: str, keep_status: bool = False) -> None:
        track = self.tracks.pop(space, None)
        if track is not None:
            await self._finish(track, keep_status)

    async def _finish(self, track: Track, keep_status: bool = False) -> None:
        """Write a stopped track's last packets, close its file, store its size (and,
        unless the server is only stopping, that the recording stopped)."""
        space = track.space
        track.active = False
        media = self.media.get(space)
        if media is not None and getattr(media, "recorder", None) is track:
            media.recorder = None
        batch = track.take()
        new = space in self._fresh
        self._fresh.discard(space)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, track.write, batch, new)
        size = track.writer.bytes if track.writer is not None else 0
        dur = track.samples / RATE
        await loop.run_in_executor(self._io, track.close)
        rec = self.store.get_recording(space)
        if rec is not None and rec.status == "recording" and not keep_status:  # ended
            self.store.set_recording(space, False)
        self.store.set_recording_size(space, size, dur)

    # ------------------------------------------------------------------ reading

    def file(self, space: str) -> Path | None:
        """The recording's file, if the space has one (being written or not)."""
        if self.store.get_recording(space) is None:
            return None
        path = self.path(space)
        return path if path.exists() else None

    async def duration(self, space: str) -> float:
        """Seconds recorded so far (flushing first if it is being written)."""
        await self.settle()
        if space in self.tracks:
            await self.flush(space)
            return self.tracks[space].samples / RATE
        path = self.file(space)
        if path is None:
            return 0.0
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(self._io, scan, path)
        return info.granule / RATE

    async def cut(self, space: str, start_s: float, duration_s: float) -> Clip:
        """A clip file of [start, start + duration) of the recording (flushed first)."""
        src = self.path(space)
        if space in self.tracks:
            await self.flush(space)
        clip_id = "c-" + secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        clip = await loop.run_in_executor(
            self._io, write_clip, src, self.clip_path(clip_id), start_s, duration_s
        )
        CLIPS_CUT.inc()
        self.written.clip_bytes += clip.bytes
        return clip

    def stats(self) -> dict[str, float]:
        """What every recording and clip wrote so far (`Written.stats`)."""
        return self.written.stats()

    def expire(self) -> int:
        """Delete expired clips (rows and files); how many."""
        gone = self.store.expire_clips(self.clock())
        for clip in gone:
            with contextlib.suppress(OSError):
                os.unlink(self.clip_path(clip.id))
        return len(gone)
