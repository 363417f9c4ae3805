"""Live captions: speech recognition of whoever may be heard, off the media loop.

Why this shape: recognition costs ~0.15-0.25 core-seconds per second of speech
(pocketsphinx 5, its bundled US English model), a hundred times what forwarding a
packet costs, so it must never run on the event loop that forwards audio.

* The media plane hands each packet it lets through (``MediaRoom.on_heard``: on stage,
  unmuted, space live) to `SpaceCaptions.tap`, which only appends the Opus payload to
  that speaker's buffer -- no decoding, no I/O -- when the space has captions on. After
  a DTX pause (no packets for `DTX_GAP_S`) it first appends Opus silence frames for the
  pause, so utterances split where the speaker paused.
* Every `CHUNK_PACKETS` packets (200 ms of audio), or when a speaker pauses, the buffer
  goes as one job to a recogniser process (`Captioner`: ``--caption-workers`` processes,
  each a single-process executor, so a stream's jobs run in order on the process that
  holds its decoder state). The process decodes the Opus (libopus via PyAV), resamples
  to 16 kHz, finds utterances by energy (an utterance ends after `HANGOVER_S` of quiet),
  and runs pocketsphinx on them: a partial hypothesis per job while someone talks, a
  final one at the end of each utterance.
* Results come back on the event loop and go out as ``caption`` events (`Room.caption`);
  finals are stored with the space.

Shedding, when the recognisers cannot keep up (a worker's backlog is the seconds of
audio sent to it and not yet recognised): above `PARTIALS_SHED_S` jobs ask for no
partial hypothesis and late partials are dropped; above `GAP_SHED_S` (a starting
worker: `STARTING_SHED_S`) audio is dropped altogether: the worker finalises what it
had, and once the backlog drains a final caption with ``gap: true`` marks the skipped
span. Audio forwarding never waits for any
of it. `/metrics` reports all of it (`Captioner.families`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from spacesim.server.recording import SILENCE

__all__ = [
    "CHUNK_PACKETS",
    "GAP_SHED_S",
    "PARTIALS_SHED_S",
    "CaptionSink",
    "Captioner",
    "SpaceCaptions",
    "to_webvtt",
]

log = logging.getLogger("spacesim.server.captions")

#: Opus packets (20 ms each) per recognition job.
CHUNK_PACKETS = 10
PACKET_S = 0.020
#: A partly filled buffer is sent after this long without a packet from its speaker.
FLUSH_AFTER_S = 0.25
#: A speaker who sent nothing for this long is finished: their utterance becomes final.
END_AFTER_S = 0.8
#: A worker's backlog (seconds of audio queued) above which partial captions are shed...
PARTIALS_SHED_S = 1.0
#: ... and above which audio itself is dropped (a gap in the captions); while a worker
#: process is still starting (spawning, loading its model: 1-5 s on a busy machine) the
#: audio waits for it up to `STARTING_SHED_S` instead.
GAP_SHED_S = 3.0
STARTING_SHED_S = 10.0
#: A speaker silent this long was in a DTX pause (Opus sends nothing, RFC 7587 §3.1.3);
#: up to `DTX_FILL_MAX` silence frames stand in for it, so that the recogniser's
#: utterance detector hears the pause instead of words spliced together.
DTX_GAP_S = 0.2
DTX_FILL_MAX = 40
#: How often idle buffers are flushed and finished streams ended.
TICK_S = 0.1

# --------------------------------------------------------------------------- worker side

_RATE = 16_000
_FRAME = 320  # 20 ms at 16 kHz
#: Quiet after speech that ends an utterance; the longest utterance before a forced final.
#: 0.8 s, not shorter: pauses in conversation are often 0.3-0.8 s (Brady's are exponential,
#: mean 1.6 s), and a phrase cut there reaches the recogniser as one or two words without
#: their context ("spring" alone came back as "drink"); the shipped clips' word error
#: rate in the swarm's spurts fell from ~22 % to ~15 % going from 0.5 s to 0.8 s.
HANGOVER_S = 0.8
MAX_UTTERANCE_S = 12.0
#: A 20 ms frame is speech if its RMS exceeds this (int16 units; about -46 dBFS).
_VOICE_RMS = 160.0
_PREROLL = 10  # quiet frames kept before an utterance starts (200 ms)

#: One result: (text, final, start, end) with times on the caller's clock.
Result = tuple[str, bool, float, float]


class _Stream:
    """A speaker's recognition state inside a worker process."""

    def __init__(self) -> None:
        import av

        self.codec: Any = av.CodecContext.create("libopus", "r")
        # FFmpeg's libopus decoder gives 48 kHz here whatever sample_rate asks (PyAV 18,
        # checked on the shipped clips), so resample to the model's 16 kHz
        self.resampler: Any = av.AudioResampler(format="s16", layout="mono", rate=_RATE)
        self.decoder: Any = _take_decoder()
        self.in_utt = False
        self.start = 0.0
        self.last_voice = 0.0
        self.quiet = 0
        self.partial = ""
        self.preroll: list[bytes] = []

    def pcm(self, payloads: Iterable[bytes]) -> bytes:
        """Decode Opus to 16 kHz mono s16; an undecodable packet counts as 20 ms of silence."""
        import av

        out: list[bytes] = []
        for payload in payloads:
            try:
                for frame in self.codec.decode(av.Packet(payload)):
                    for res in self.resampler.resample(frame):
                        out.append(bytes(res.planes[0])[: res.samples * 2])
            except (av.FFmpegError, ValueError):
                out.append(bytes(2 * _FRAME))
        return b"".join(out)

    def feed(self, t0: float, payloads: list[bytes], partials: bool) -> list[Result]:
        import numpy as np

        pcm = self.pcm(payloads)
        results: list[Result] = []
        pending: list[bytes] = []
        hang = round(HANGOVER_S / PACKET_S)
        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % (2 * _FRAME)], dtype=np.int16)
        frames = samples.reshape(-1, _FRAME).astype(np.float32)
        rms = np.sqrt((frames * frames).mean(axis=1)) if len(frames) else np.zeros(0)
        for i, level in enumerate(rms):
            chunk = pcm[i * 2 * _FRAME : (i + 1) * 2 * _FRAME]
            t = t0 + i * PACKET_S
            voiced = bool(level > _VOICE_RMS)
            if not self.in_utt:
                if not voiced:
                    self.preroll = [*self.preroll[-(_PREROLL - 1) :], chunk]
                    continue
                self.decoder.start_utt()
                self.in_utt = True
                self.start = t - len(self.preroll) * PACKET_S
                pending.extend(self.preroll)
                self.preroll = []
                self.quiet = 0
                self.partial = ""
            pending.append(chunk)
            if voiced:
                self.quiet = 0
                self.last_voice = t + PACKET_S
            else:
                self.quiet += 1
            if self.quiet >= hang or t + PACKET_S - self.start >= MAX_UTTERANCE_S:
                self.decoder.process_raw(b"".join(pending), full_utt=False)
                pending = []
                results.extend(self.finish())
        if pending:
            self.decoder.process_raw(b"".join(pending), full_utt=False)
        if self.in_utt and partials:
            hyp = self.decoder.hyp()
            text = hyp.hypstr if hyp is not None else ""
            if text and text != self.partial:
                self.partial = text
                results.append((text, False, self.start, t0 + len(rms) * PACKET_S))
        return results

    def finish(self) -> list[Result]:
        """End the open utterance, if any: its final caption (none if nothing was said)."""
        if not self.in_utt:
            return []
        self.in_utt = False
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        return [(text, True, self.start, max(self.last_voice, self.start))] if text else []


_streams: dict[str, _Stream] = {}
_free: list[Any] = []  # decoders of finished streams, reused (loading one takes ~0.3 s)


def _take_decoder() -> Any:
    if _free:
        return _free.pop()
    from pocketsphinx import Decoder

    return Decoder(samprate=_RATE, loglevel="FATAL")


def _init_worker() -> None:
    """Load the model once when the process starts, not at the first speaker."""
    _free.append(_take_decoder())


def work_ready() -> int:
    """The first job of every worker process: submitting it starts the process (and loads
    the model) ahead of need; its answer, the process id, lets the server read the
    process's CPU time (`process_cpu`)."""
    return os.getpid()


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) process `pid` has used so far; None if unreadable.

    From ``/proc/PID/stat`` (Linux; proc(5)): fields 14 and 15 are utime and stime in
    clock ticks (``sysconf(_SC_CLK_TCK)``). Field 2, the command name in parentheses,
    may hold spaces, so fields are counted after its closing parenthesis (field 3 first).
    Read from the server: ``time.process_time`` counts only the calling process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def work_feed(key: str, t0: float, payloads: list[bytes], partials: bool) -> list[Result]:
    """One job (in a worker process): recognise `payloads`, whose first starts at `t0`."""
    stream = _streams.get(key)
    if stream is None:
        stream = _streams[key] = _Stream()
    return stream.feed(t0, payloads, partials)


def work_end(key: str) -> list[Result]:
    """A stream is over (in a worker process): its last final, and its decoder freed."""
    stream = _streams.pop(key, None)
    if stream is None:
        return []
    results = stream.finish()
    _free.append(stream.decoder)
    return results


# --------------------------------------------------------------------------- server side


class CaptionSink(Protocol):
    """Where captions go: `spacesim.server.room.Room` (its ``caption`` and ``space``)."""

    space: Any

    def caption(
        self, speaker: str, text: str, *, final: bool, start: float, end: float, gap: bool = False
    ) -> object: ...

    def now(self) -> float: ...


def _single_process() -> Executor:
    # spawn, not fork: the server has threads (aiortc, the executor's own), and a forked
    # child of a multi-threaded process may inherit a held lock (multiprocessing docs,
    # "Contexts and start methods"). One process per executor: its jobs run one at a time
    # in submission order (concurrent/futures/process.py: one FIFO call queue, read by
    # the executor's only process), which a stream's decoder state needs.
    return ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
    )


class _Worker:
    __slots__ = (
        "_cpu_base",
        "_cpu_done",
        "_cpu_now",
        "_executor",
        "_make",
        "backlog",
        "pid",
        "ready",
        "streams",
    )

    def __init__(self, make: Callable[[], Executor]) -> None:
        self._make = make
        # made at first use: a server that never captions holds no queues or pipes for it
        self._executor: Executor | None = None
        self.backlog = 0.0  # seconds of audio sent and not yet recognised
        self.streams = 0
        self.ready = False  # its process answered a job (it spawned and loaded its model)
        self.pid: int | None = None  # the process's id, once its first job answered
        self._cpu_base = 0.0  # CPU seconds of the current process when it was ready
        self._cpu_now = 0.0  # ... and when last read
        self._cpu_done = 0.0  # CPU seconds of the processes this worker replaced

    @property
    def gap_limit(self) -> float:
        """The backlog above which audio is dropped: a starting process is not behind."""
        return GAP_SHED_S if self.ready else STARTING_SHED_S

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            executor = self._executor = self._make()
            first = executor.submit(work_ready)  # starts the process; answers its pid

            def learn(f: Future[int]) -> None:  # on the executor's thread
                if self._executor is executor and not f.cancelled() and f.exception() is None:
                    self.ready = True  # a bool store: atomic, whatever the thread
                    pid = f.result()
                    # CPU counts from here: loading the model (~1 core-second) is a
                    # process's start-up, not recognition (`spacesim calibrate`)
                    self._cpu_base = self._cpu_now = process_cpu(pid) or 0.0
                    self.pid = pid

            first.add_done_callback(learn)
        return self._executor

    def cpu_seconds(self) -> float:
        """CPU seconds this worker's processes have used since each was ready (its model
        loaded and its first job answered)."""
        if self.pid is not None:
            now = process_cpu(self.pid)
            if now is not None:
                self._cpu_now = now
        return self._cpu_done + self._cpu_now - self._cpu_base

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def replace(self, broken: Executor) -> None:
        """`broken`'s process died (e.g. killed): the next job starts a new one. Its
        streams' state is gone; their next jobs start fresh utterances."""
        if self._executor is broken:
            log.error("captions: a recogniser process died; starting another")
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            self.ready = False
            self._cpu_done += self._cpu_now - self._cpu_base  # the dead process's still counts
            self._cpu_base = self._cpu_now = 0.0
            self.pid = None


class Captioner:
    """The server's recognisers: `workers` processes; each speaking stream sticks to one
    (the least loaded when it starts). `executor` builds one single-process executor per
    worker (tests pass an in-memory fake)."""

    def __init__(
        self,
        workers: int,
        *,
        executor: Callable[[], Executor] = _single_process,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError("caption workers must be at least 1")
        self.workers = [_Worker(executor) for _ in range(workers)]
        self.clock = clock
        self.spaces: dict[str, SpaceCaptions] = {}
        self._task: asyncio.Task[None] | None = None
        self.counts = dict.fromkeys(
            (
                "jobs",
                "audio_seconds",
                "partials",
                "finals",
                "partials_shed",
                "gaps",
                "audio_seconds_shed",
                "errors",
            ),
            0.0,
        )
        self.latency_sum = 0.0  # final caption: end of speech -> published (room clock)
        self._warm = False

    def warm(self) -> None:
        """Start the worker processes now (a process spawns and loads its model in about a
        second): called when a space turns captions on, so the first speech does not wait."""
        if self._warm:
            return
        self._warm = True
        for worker in self.workers:
            with contextlib.suppress(RuntimeError):  # shut down
                worker.executor  # noqa: B018  # made now: its first job starts the process

    def space(self, room: CaptionSink) -> SpaceCaptions:
        """The taps of one space (made on first use)."""
        sid = str(room.space.space_id)
        found = self.spaces.get(sid)
        if found is None:
            found = self.spaces[sid] = SpaceCaptions(room, self)
        if room.space.captions:
            self.warm()
        return found

    def assign(self) -> int:
        """A worker for a new stream: the one with the fewest streams, then least backlog."""
        i = min(
            range(len(self.workers)),
            key=lambda k: (self.workers[k].streams, self.workers[k].backlog),
        )
        self.workers[i].streams += 1
        return i

    def start(self) -> None:
        """Run the flush ticker on the current event loop (idle buffers, ended streams)."""

        async def ticker() -> None:
            while True:
                await asyncio.sleep(TICK_S)
                for space in list(self.spaces.values()):
                    try:
                        space.tick()
                    except Exception:
                        log.exception("captions: tick failed for %s", space.room.space.space_id)

        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(ticker())

    def retire(self, space_id: str) -> None:
        """A space ended: its open utterances are finalised (stored), its taps dropped."""
        space = self.spaces.pop(space_id, None)
        if space is not None:
            space.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for sid in list(self.spaces):
            self.retire(sid)
        for worker in self.workers:
            worker.shutdown()

    def stats(self) -> dict[str, float]:
        out = dict(self.counts)
        out["backlog_seconds"] = sum(w.backlog for w in self.workers)
        out["workers"] = len(self.workers)
        out["streams"] = sum(w.streams for w in self.workers)
        out["final_latency_seconds"] = self.latency_sum
        out["cpu_seconds"] = sum(w.cpu_seconds() for w in self.workers)
        return out

    def families(self) -> list[Any]:
        """Metric families for /metrics (`metrics.render`): what the recognisers did and
        what they shed."""
        stats = self.stats()
        families: list[Any] = []
        for key, help_text in (
            ("jobs", "Recognition jobs sent to caption workers"),
            ("audio_seconds", "Seconds of speech sent to caption workers"),
            ("partials", "Partial captions published"),
            ("finals", "Final captions published (and stored)"),
            ("partials_shed", "Partial captions shed (workers behind)"),
            ("gaps", "Gaps marked: speech dropped unrecognised (workers far behind)"),
            ("audio_seconds_shed", "Seconds of speech dropped unrecognised"),
            ("errors", "Recognition jobs that failed"),
            ("final_latency_seconds", "Sum of end of speech -> final caption, seconds"),
            ("cpu_seconds", "CPU seconds the caption worker processes used, once ready"),
        ):
            c = CounterMetricFamily(f"spacesim_captions_{key}", help_text)
            c.add_metric([], stats[key])
            families.append(c)
        for key, help_text in (
            ("backlog_seconds", "Seconds of speech queued at the caption workers"),
            ("workers", "Caption worker processes"),
            ("streams", "Speaking streams being captioned"),
        ):
            g = GaugeMetricFamily(f"spacesim_captions_{key}", help_text)
            g.add_metric([], stats[key])
            families.append(g)

        return families


class _Speaker:
    __slots__ = ("buf", "ended", "gap", "key", "last", "name", "t0", "worker")

    def __init__(self, name: str, key: str, worker: int) -> None:
        self.name = name
        self.key = key
        self.worker = worker
        self.buf: list[bytes] = []
        self.t0 = 0.0  # room time of the buffer's first packet
        self.last = 0.0  # clock of the last packet
        self.gap: tuple[float, float] | None = None  # audio dropped since the last job
        self.ended = False  # the worker was told to finalise (a gap began)


class SpaceCaptions:
    """One space's captioning: a buffer per heard speaker, jobs to the `Captioner`'s
    workers, results published through `room`."""

    def __init__(self, room: CaptionSink, captioner: Captioner) -> None:
        self.room = room
        self.captioner = captioner
        self.speakers: dict[str, _Speaker] = {}
        self._serial = 0

    def tap(self, speaker: str, payload: bytes, now_ms: int = 0) -> None:
        """One packet the media plane forwarded (``MediaRoom.on_heard``): buffer it.

        The hot path when captions are on: an append, and a job every `CHUNK_PACKETS`.
        """
        if not self.room.space.captions:
            return
        sp = self.speakers.get(speaker)
        now = self.captioner.clock()
        quiet = 0
        if sp is None:
            self.captioner.warm()
            self._serial += 1
            key = f"{self.room.space.space_id}/{speaker}/{self._serial}"
            sp = self.speakers[speaker] = _Speaker(speaker, key, self.captioner.assign())
        elif now - sp.last >= DTX_GAP_S:  # a DTX pause: the recogniser hears it as quiet
            quiet = min(round((now - sp.last) / PACKET_S) - 1, DTX_FILL_MAX)
        buf = sp.buf
        if not buf:
            sp.t0 = self.room.now() - quiet * PACKET_S
        if quiet:
            buf.extend(itertools.repeat(SILENCE, quiet))
        buf.append(payload)
        sp.last = now
        if len(buf) >= CHUNK_PACKETS:
            self._send(speaker, sp)

    def tick(self) -> None:
        """Flush buffers of speakers who paused; finish those gone quiet (or no longer
        captioned): their utterance becomes final."""
        now = self.captioner.clock()
        for name, sp in list(self.speakers.items()):
            idle = now - sp.last
            if sp.buf and (idle >= FLUSH_AFTER_S or not self.room.space.captions):
                self._send(name, sp)
            if idle >= END_AFTER_S or not self.room.space.captions:
                self._finish(name, sp)

    def close(self) -> None:
        for name, sp in list(self.speakers.items()):
            if sp.buf:
                self._send(name, sp)
            self._finish(name, sp)

    def _finish(self, name: str, sp: _Speaker) -> None:
        del self.speakers[name]
        worker = self.captioner.workers[sp.worker]
        worker.streams -= 1
        self._flush_gap(name, sp)
        self._submit(sp, 0.0, work_end, sp.key)

    def _flush_gap(self, name: str, sp: _Speaker) -> None:
        if sp.gap is not None:
            start, end = sp.gap
            sp.gap = None
            self.captioner.counts["gaps"] += 1
            self.room.caption(name, "", final=True, start=start, end=end, gap=True)

    def _send(self, name: str, sp: _Speaker) -> None:
        payloads, sp.buf = sp.buf, []
        seconds = len(payloads) * PACKET_S
        worker = self.captioner.workers[sp.worker]
        counts = self.captioner.counts
        if worker.backlog > worker.gap_limit:  # far behind: drop this audio, mark the gap
            counts["audio_seconds_shed"] += seconds
            start = sp.gap[0] if sp.gap is not None else sp.t0
            sp.gap = (start, sp.t0 + seconds)
            if not sp.ended:  # what it heard before the gap becomes final
                sp.ended = True
                self._submit(sp, 0.0, work_end, sp.key)
            return
        self._flush_gap(name, sp)
        sp.ended = False
        partials = worker.backlog <= PARTIALS_SHED_S
        if not partials:
            counts["partials_shed"] += 1
        counts["jobs"] += 1
        counts["audio_seconds"] += seconds
        self._submit(sp, seconds, work_feed, sp.key, sp.t0, payloads, partials)

    def _submit(self, sp: _Speaker, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        worker = self.captioner.workers[sp.worker]
        executor = worker.executor
        try:
            future: Future[list[Result]] = executor.submit(fn, *args)
        except BrokenExecutor:  # its process died (BrokenProcessPool; a RuntimeError, so first)
            worker.replace(executor)
            executor = worker.executor
            try:
                future = executor.submit(fn, *args)
            except RuntimeError:
                return
        except RuntimeError:  # shut down (the server is stopping)
            return
        worker.backlog += seconds
        loop = asyncio.get_running_loop()

        def done(f: Future[list[Result]]) -> None:  # on the worker's result thread
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._results, sp, seconds, f, executor)

        future.add_done_callback(done)

    def _results(
        self, sp: _Speaker, seconds: float, future: Future[list[Result]], executor: Executor
    ) -> None:
        """A job's results, on the event loop: publish them (shedding stale partials)."""
        worker = self.captioner.workers[sp.worker]
        worker.backlog = max(0.0, worker.backlog - seconds)
        counts = self.captioner.counts
        if future.cancelled():
            return
        worker.ready = worker.ready or future.exception() is None
        exc = future.exception()
        if exc is not None:
            if isinstance(exc, BrokenExecutor):
                worker.replace(executor)
            counts["errors"] += 1
            log.error("captions: recognition failed for %s: %r", sp.key, exc)
            return
        name = sp.name
        for text, final, start, end in future.result():
            if not final and worker.backlog > PARTIALS_SHED_S:
                counts["partials_shed"] += 1
                continue
            counts["finals" if final else "partials"] += 1
            if final:
                self.captioner.latency_sum += max(0.0, self.room.now() - end)
            self.room.caption(name, text, final=final, start=start, end=end)


# --------------------------------------------------------------------------- export


def _vtt_time(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def to_webvtt(captions: Iterable[Any]) -> str:
    """WebVTT (W3C) of stored captions: one cue per final, the speaker as a voice span.

    A gap reads ``[captions skipped]``. Cue text escapes ``&``, ``<`` and ``>`` (WebVTT
    section 4.2.2: cue text may not hold them raw).
    """

    def esc(text: str) -> str:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    lines = ["WEBVTT", ""]
    for c in captions:
        end = max(c.end, c.start + 0.001)
        text = "[captions skipped]" if c.gap else esc(c.text).replace("\n", " ")
        speaker = esc(c.speaker).replace("\n", " ")
        lines += [str(c.id), f"{_vtt_time(c.start)} --> {_vtt_time(end)}"]
        lines += [f"<v {speaker}>{text}", ""]
    return "\n".join(lines)
