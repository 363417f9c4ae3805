"""What synthetic speakers say: packaged speech clips, tones, and a paced Opus track.

Speakers publish pre-encoded Opus (aiortc sends an ``av.Packet`` a track yields
as is, see FACTS.md), so a speaker costs no encoding at run time.

Clips
    ``spacesim/client/clips/NAME.opuspk`` are short English sentences spoken by
    Debian's ``flite`` (voices slt, awb, rms, kal16), encoded as 20 ms mono Opus
    packets at 48 kHz, ~24 kbit/s; ``clips/transcripts.json`` maps each name to its
    text. ``scripts/make_clips.py`` regenerates them.

    ``.opuspk`` format: the 4 bytes ``OPK1``, then per packet a big-endian u16
    length followed by that many bytes of one Opus packet (TOC included; every
    packet holds 20 ms of audio). Nothing else -- no container, no timestamps.

Tones
    :func:`tone_packets` encodes a sine on demand (cached).

:class:`SpeakerTrack` yields a clip's packets as ``av.Packet`` s every 20 ms,
looping, each one marked (:func:`spacesim.client.opus.mark`) with the sender id,
a sequence number and ``time.monotonic_ns()`` at the moment it is handed to
aiortc, so a listener can measure latency without decoding. Given talk phases
(`spacesim.behaviour.talk_phases`) it talks in spurts: during a pause it sends nothing
with DTX (as Opus DTX does) and a marked Opus silence frame every 20 ms without.
"""

from __future__ import annotations

import asyncio
import functools
import json
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from fractions import Fraction
from importlib import resources
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from spacesim.client.opus import mark

__all__ = [
    "FRAME_NS",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "SILENCE",
    "SpeakerTrack",
    "clip_names",
    "clip_pauses",
    "encode_pcm",
    "load_clip",
    "read_opuspk",
    "tone_packets",
    "transcripts",
    "write_opuspk",
]

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz: one Opus packet, one RTP timestamp step
FRAME_NS = 20_000_000
TIME_BASE = Fraction(1, SAMPLE_RATE)
OPUSPK_MAGIC = b"OPK1"
#: A 20 ms Opus silence frame (TOC 0xf8: CELT fullband 20 ms, one frame of 2 bytes); what
#: a speaker without DTX sends between talk spurts (browsers send comfort frames too).
SILENCE = b"\xf8\xff\xfe"
_LEN = struct.Struct("!H")
#: A decoded 20 ms frame quieter than this (RMS, int16 units) is a gap between words.
PAUSE_RMS = 300.0


# --------------------------------------------------------------------------- clip files


def write_opuspk(packets: Iterable[bytes]) -> bytes:
    """Serialise Opus packets in the ``.opuspk`` format (see the module docstring)."""
    out = bytearray(OPUSPK_MAGIC)
    for p in packets:
        if len(p) > 0xFFFF:
            raise ValueError("packet too long for .opuspk")
        out += _LEN.pack(len(p))
        out += p
    return bytes(out)


def read_opuspk(data: bytes) -> tuple[bytes, ...]:
    """Parse an ``.opuspk`` file's bytes into its packets; ValueError if malformed."""
    if data[:4] != OPUSPK_MAGIC:
        raise ValueError("not an .opuspk file")
    out: list[bytes] = []
    i = 4
    while i < len(data):
        if i + 2 > len(data):
            raise ValueError("truncated .opuspk length")
        (n,) = _LEN.unpack_from(data, i)
        i += 2
        if i + n > len(data):
            raise ValueError("truncated .opuspk packet")
        out.append(data[i : i + n])
        i += n
    return tuple(out)


def _clips_dir() -> Any:
    return resources.files("spacesim.client").joinpath("clips")


@functools.cache
def clip_names() -> tuple[str, ...]:
    """Names of the packaged speech clips, sorted."""
    return tuple(
        sorted(
            e.name.removesuffix(".opuspk")
            for e in _clips_dir().iterdir()
            if e.name.endswith(".opuspk")
        )
    )


@functools.cache
def load_clip(name: str) -> tuple[bytes, ...]:
    """The 20 ms Opus packets of a packaged clip (``KeyError`` for an unknown name)."""
    if name not in clip_names():
        raise KeyError(f"no clip {name!r}; have {', '.join(clip_names())}")
    return read_opuspk(_clips_dir().joinpath(f"{name}.opuspk").read_bytes())


@functools.cache
def clip_pauses(name: str) -> tuple[bool, ...]:
    """Per packet of clip `name`: is it inside a pause (a place a talk spurt may end)?

    Brady's talk spurts are speech between pauses, so a person's spurt ends in a pause,
    not inside a word; a synthetic speaker that cut its clip anywhere would make
    recognisers hear half-words that no listener of a real Space hears. A packet is in
    a pause when it and both neighbours decode below `PAUSE_RMS` (the clips' words peak
    at 3,000-14,000): at least 60 ms of quiet, longer than the closure of a stop such as
    the t of "story" (one or two quiet frames), which a cut would split into "s" and
    "tory". The clip loops, so its first and last packets neighbour each other.
    """
    codec: Any = av.CodecContext.create("libopus", "r")
    quiet: list[bool] = []
    for payload in load_clip(name):
        level = 0.0
        for frame in codec.decode(av.Packet(payload)):
            a = frame.to_ndarray().astype(np.float64)
            level = max(level, float(np.sqrt((a * a).mean()))) if a.size else level
        quiet.append(level < PAUSE_RMS)
    n = len(quiet)
    return tuple(quiet[k - 1] and quiet[k] and quiet[(k + 1) % n] for k in range(n))


@functools.cache
def _transcripts() -> dict[str, str]:
    data: dict[str, str] = json.loads(
        _clips_dir().joinpath("transcripts.json").read_text(encoding="utf-8")
    )
    return data


def transcripts() -> dict[str, str]:
    """``{clip name: the sentence spoken}`` (for checking what a listener recognised)."""
    return dict(_transcripts())


# --------------------------------------------------------------------------- encoding


def encode_pcm(samples: np.ndarray, bit_rate: int = 24_000) -> tuple[bytes, ...]:
    """Encode mono 48 kHz int16 PCM as 20 ms Opus packets (libopus via PyAV).

    The last frame is zero-padded; the encoder is flushed, so the result holds
    ``ceil((len + encoder delay) / 960)`` packets.
    """
    pcm = np.asarray(samples, dtype=np.int16).reshape(-1)
    pad = (-len(pcm)) % FRAME_SAMPLES
    pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
    ctx: Any = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = SAMPLE_RATE
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.bit_rate = bit_rate
    out: list[bytes] = []
    for i in range(len(pcm) // FRAME_SAMPLES):
        frame = av.AudioFrame.from_ndarray(
            pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES].reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = i * FRAME_SAMPLES
        frame.time_base = TIME_BASE
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    return tuple(out)


@functools.cache
def tone_packets(hz: float = 440.0, seconds: float = 1.0, level: float = 0.25) -> tuple[bytes, ...]:
    """20 ms mono Opus packets of a sine of ``hz`` lasting ``seconds`` (cached)."""
    n = max(1, round(seconds * SAMPLE_RATE / FRAME_SAMPLES)) * FRAME_SAMPLES
    t = np.arange(n) / SAMPLE_RATE
    x = np.sin(2 * np.pi * hz * t) * (level * 32767)
    return encode_pcm(x.astype(np.int16))


# --------------------------------------------------------------------------- track


class SpeakerTrack(MediaStreamTrack):
    """An audio track yielding marked, pre-encoded Opus ``av.Packet`` s every 20 ms.

    ``packets`` (e.g. :func:`load_clip` or :func:`tone_packets`) play in a loop
    (or once, ``loop=False``, then the track ends). Packet ``k`` (counting from 0)
    is due at ``start + k * 20 ms``, where ``start`` is the clock at the *first*
    ``recv()`` -- not at construction, which would send a burst on connect -- so
    pacing does not drift. ``pts`` is ``k * 960`` in ``time_base`` 1/48000 (aiortc's
    sender needs both, FACTS.md).

    If the event loop falls more than ``max_lag`` frames behind (a stalled loop),
    the missed slots are skipped rather than sent in a burst: ``pts`` and the clip
    position jump ahead as a real microphone's would, ``skipped`` counts them, and
    the mark's ``seq`` stays contiguous (it numbers packets sent, so a listener's
    gaps in ``seq`` are network loss only).

    Talk spurts: with ``phases`` (an iterator of ``(talking, seconds)``, e.g.
    `spacesim.behaviour.talk_phases`, consumed on the track's clock from the first
    ``recv()``) the clip advances only while talking; in a pause the track sends
    nothing when ``dtx`` is true (the slots pass, so ``pts`` jumps as Opus DTX's RTP
    timestamps do) and a marked `SILENCE` frame per slot when it is false, so the
    server still forwards a packet stream. ``gate`` (called per slot) returning False
    sends nothing at all: a muted microphone, or a stage member who does not talk.
    ``on_phase(talking, seconds)`` is called as each phase begins. With ``pauses`` (one
    flag per packet, e.g. :func:`clip_pauses`) a talk spurt ends at the gap between
    words nearest to its drawn end, as a person's does. Every packet sent,
    silence included, carries its mark; ``seq`` numbers packets sent, so a DTX gap is
    not loss.

    Counters: ``sent`` (packets yielded), ``last_seq`` (seq of the last one, -1
    before the first), ``skipped`` (20 ms slots skipped), ``silent`` (silence frames
    among those sent), ``quiet`` (slots with no packet: DTX pauses and a closed gate),
    ``start_ns``; `talking` is the current phase.
    """

    kind = "audio"

    def __init__(
        self,
        packets: Sequence[bytes],
        sender_id: int,
        *,
        loop: bool = True,
        max_lag: int = 5,
        clock: Callable[[], int] = time.monotonic_ns,
        phases: Iterable[tuple[bool, float]] | None = None,
        dtx: bool = False,
        gate: Callable[[], bool] | None = None,
        on_phase: Callable[[bool, float], None] | None = None,
        pauses: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        if not packets:
            raise ValueError("no packets to send")
        self.packets = tuple(packets)
        self.sender_id = sender_id
        self.loop = loop
        self.max_lag = max_lag
        self._clock = clock
        self.start_ns: int | None = None
        self.sent = 0
        self.last_seq = -1
        self.skipped = 0
        self._slot = 0  # next 20 ms slot (pts / 960)
        self._clip = 0  # next clip packet (advances only while talking)
        self._phases: Iterator[tuple[bool, float]] | None = (
            iter(phases) if phases is not None else None
        )
        self.dtx = dtx
        self.gate = gate
        self.on_phase = on_phase
        if pauses is not None and (len(pauses) != len(self.packets) or not any(pauses)):
            raise ValueError("pauses needs one flag per packet, some of them True")
        self.pauses = tuple(pauses) if pauses is not None else None
        self.talking = True
        self._phase_end: int | None = None  # clock (ns) at which the current phase ends
        self.silent = 0
        self.quiet = 0

    def _talking_at(self, t_ns: int) -> bool:
        """The phase at `t_ns` (phases are laid end to end from the first slot)."""
        if self._phases is None:
            return True
        if self._phase_end is None:
            self._phase_end = t_ns
        while t_ns >= self._phase_end:
            self.talking, seconds = next(self._phases)
            if self.talking and self.pauses is not None:
                seconds = self._to_gap(seconds)
            self._phase_end += max(int(seconds * 1e9), 1)
            if self.on_phase is not None:
                self.on_phase(self.talking, seconds)
        return self.talking

    def _to_gap(self, seconds: float) -> float:
        """A talk spurt of about `seconds` that ends at the gap between words nearest to
        its drawn end (ties go to the shorter one), so spurts keep their mean length."""
        pauses, n = self.pauses, len(self.packets)
        assert pauses is not None
        want = max(round(seconds * 1e9 / FRAME_NS), 1)
        for step in range(n):
            for k in (want - step, want + step):
                if k >= 1 and pauses[(self._clip + k) % n]:
                    return k * FRAME_NS / 1e9
        return seconds  # unreachable: __init__ checked there is a gap

    async def recv(self) -> av.Packet[Any]:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            slot = self._slot
            if not self.loop and self._clip >= len(self.packets):
                self.stop()
                raise MediaStreamError
            now = self._clock()
            if self.start_ns is None:
                self.start_ns = now
            due = self.start_ns + slot * FRAME_NS
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                if self.readyState != "live":
                    raise MediaStreamError
            elif now - due > self.max_lag * FRAME_NS:
                behind = (now - due) // FRAME_NS
                self.skipped += behind
                slot += behind
                due += behind * FRAME_NS
                if self._phases is None:  # a microphone's position moves on with time
                    self._clip += behind
                if not self.loop and self._clip >= len(self.packets):
                    self.stop()
                    raise MediaStreamError
            self._slot = slot + 1
            talking = self._talking_at(due)
            if (self.gate is not None and not self.gate()) or (not talking and self.dtx):
                self.quiet += 1
                continue  # this slot sends nothing
            if talking:
                frame = self.packets[self._clip % len(self.packets)]
                self._clip += 1
            else:
                frame = SILENCE
                self.silent += 1
            seq = self.sent
            packet = av.Packet(mark(frame, self.sender_id, seq, self._clock()))
            packet.pts = slot * FRAME_SAMPLES
            packet.time_base = TIME_BASE
            self.sent = seq + 1
            self.last_seq = seq
            return packet
