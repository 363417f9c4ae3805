"""Live captions: word error rate, final-caption latency, recogniser streams per core, and
what captions cost the forwarding path.

What runs (all on 127.0.0.1, every step with a deadline), per run (``--runs``, median):

* A real ``spacesim serve --caption-workers W`` process (``spacesim.server.launch``),
  fresh database. Its forwarding CPU is read from ``/proc/<pid>/task/*/schedstat`` (its
  own threads only: the recogniser processes are other processes, read the same way and
  reported apart), so nothing is added to the server for the benchmark.
* In this process: a host (signalling only), ``--listeners`` lite listeners (WebRTC,
  no decoding: `spacesim.client.session.connect_audio`, RTP read in batches), one event
  reader on the WebSocket, and speakers: users invited on stage who publish the shipped
  speech clips (`spacesim.client.speaker`, the clips and ``transcripts.json`` that ship
  with the client), every clip in turn (each speaker from a different first one), each
  followed by ``PAUSE_S`` of Opus silence frames (no DTX), so every talk phase is one
  known sentence.

1. *Forwarding cost* (``sfu_cost_with_captions``): with ``SFU_SPEAKERS`` speakers and
   the listeners connected, ``--windows`` pairs of windows of ``--window`` s alternate
   captions off and on (the host's ``captions_off`` / ``captions_on`` actions, then
   ``SETTLE_S``); per window, server CPU ns / packets forwarded (``/metrics``
   ``spacesim_packets_forwarded``). The figure is median(on) / median(off): what the
   tap, the job hand-off and the caption events add per forwarded packet. Alternating
   cancels drift; the recognisers' own CPU is not in it (other processes), though they
   share the machine's two cores with everything else.
2. *Recognition*, captions on throughout: 1, 2, 4 ... speaking streams (``--streams``,
   doubling up to ``--max-streams``), ``--seconds`` per level, until the workers
   saturate: a level is saturated when the server shed anything (``/metrics``
   ``spacesim_captions_partials_shed_total`` or ``..._gaps_total`` grew) or its backlog
   at the end of the level exceeds 1 s of audio.

Figures (medians over runs; unsaturated levels, except as said):

* ``caption_wer`` (levels where nothing was dropped unrecognised, i.e. no gap; shed
  partials do not change finals): word error rate of final captions against the transcript of the
  sentence spoken: each final is put into the speaker's phase its audio midpoint falls
  in (room times to monotonic through the event's ``clock_ns - t``); per phase the
  finals' words are joined and aligned to the transcript (Levenshtein on words,
  punctuation and case dropped); WER = edits / transcript words over every phase that
  ended at least ``SCORE_MARGIN_S`` before the level's end. A phase with no final
  counts as all deletions.
* ``caption_latency_p95``: end of speech (the final's ``end``, when the server received
  the last voiced audio) -> the final caption's arrival at the event reader. It holds the
  utterance end detection (``HANGOVER_S`` of quiet), the job hand-off and recognition.
* ``asr_streams_per_core``: audio seconds the recognisers took in per CPU second they
  used (``spacesim_captions_audio_seconds_total`` / the worker processes' CPU) at the
  highest unsaturated level: how many continuously speaking streams one core carries.
  Printed beside it: the highest level ``W`` workers kept up with on this machine.
* ``sfu_cost_with_captions``: above (target <= 1.1).

Run: ``python benchmarks/bench_captions.py [--runs 3] [--caption-workers 1]
[--listeners 20] [--streams 1 2 4] [--max-streams 8] [--seconds 20] [--windows 4]
[--window 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from spacesim import rtc
from spacesim.client.session import AudioLink, RoomClient, connect_audio
from spacesim.client.speaker import SpeakerTrack, clip_names, load_clip, transcripts
from spacesim.load.captions import edits, words
from spacesim.results import nearest_rank
from spacesim.server import launch
from spacesim.server.captions import HANGOVER_S

for _name in ("aioice", "aiortc"):
    logging.getLogger(_name).setLevel(logging.WARNING)

PAUSE_S = 1.5  # Opus silence between two sentences of one speaker
SFU_SPEAKERS = 2
SETTLE_S = 1.0  # after a captions toggle, before a cost window
SCORE_MARGIN_S = 4.0  # a phase is scored once it ended this long before the level's end
SLOTS = 3


# --------------------------------------------------------------------------- helpers


def _cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread of process `pid` (schedstat's first field)."""
    total = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in os.listdir(f"/proc/{pid}/task"):
            path = f"/proc/{pid}/task/{task}/schedstat"
            with contextlib.suppress(FileNotFoundError, ProcessLookupError), open(path) as f:
                total += int(f.read().split()[0])
    return total


def _worker_cpu_ns(pid: int) -> int:
    """CPU of the server's recogniser processes (spawned children running spawn_main)."""
    total = 0
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(child.cmdline()):
                total += _cpu_ns(child.pid)
    return total


async def scrape(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    text = await (await http.get(f"{base}/metrics")).text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(spacesim_[a-z_]+?)(?:_total)? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


# --------------------------------------------------------------------------- one run


class Speaker:
    """A user on stage saying every shipped sentence in turn (from its own first one), a
    pause after each, round and round."""

    def __init__(self, i: int, user: str, client: RoomClient) -> None:
        names = clip_names()
        self.user = user
        self.client = client
        self.clips = [names[(i + k) % len(names)] for k in range(len(names))]
        clips = [load_clip(c) for c in self.clips]
        self.talk = [len(c) * 0.02 for c in clips]
        phases = itertools.cycle([p for t in self.talk for p in ((True, t), (False, PAUSE_S))])
        # the clip advances only while talking: phase k plays exactly sentence k mod n
        self.track = SpeakerTrack([p for c in clips for p in c], 1000 + i, phases=phases)
        self.link: AudioLink | None = None
        self.muted = False

    def phases_between(self, t0: float, t1: float) -> list[tuple[str, float, float]]:
        """The sentences (clip, monotonic start, end) this speaker said within [t0, t1]."""
        if self.track.start_ns is None:
            return []
        a = self.track.start_ns / 1e9
        out = []
        for k in itertools.count():
            talk = self.talk[k % len(self.talk)]
            if a + talk > t1:
                return out
            if a >= t0:
                out.append((self.clips[k % len(self.clips)], a, a + talk))
            a += talk + PAUSE_S
        return out


class Run:
    def __init__(self, args: argparse.Namespace, base: str, server_pid: int) -> None:
        self.args = args
        self.base = base
        self.pid = server_pid
        self.finals: list[tuple[str, float, float, float, str]] = []  # who, a, b, arrival, text
        self.speakers: list[Speaker] = []
        self.listeners: list[AudioLink] = []
        self.received = 0

    async def main(self) -> dict[str, Any]:
        args = self.args
        async with aiohttp.ClientSession() as http:
            self.http = http
            self.host = RoomClient(self.base, "host", http)
            r = await self.host._call("POST", "/v1/spaces", {"title": "bench", "captions": True})
            self.space = str(r["id"])
            reader = RoomClient(self.base, "reader", http)
            await reader.join(self.space)
            events = asyncio.ensure_future(self._read(reader))
            for i in range(args.listeners):
                c = RoomClient(self.base, f"l{i}", http)
                self.listeners.append(
                    await connect_audio(c, self.space, self._on_rtp, read_every=0.05)
                )
            try:
                await self._add_speakers(SFU_SPEAKERS)
                await asyncio.sleep(2.0)
                ratio, on, off = await self._sfu_cost()
                levels = await self._levels()
            finally:
                events.cancel()
                for link in self.listeners + [s.link for s in self.speakers if s.link]:
                    await link.close()
        return {"sfu_ratio": ratio, "sfu_on_us": on, "sfu_off_us": off, "levels": levels}

    def _on_rtp(self, slot: int, packet: bytes, arrival_ns: int | None) -> None:
        self.received += 1

    async def _read(self, reader: RoomClient) -> None:
        async for msg in reader.events(self.space):
            if msg.get("kind") != "caption":
                continue
            a = msg["attrs"]
            if a["final"] and not a["gap"]:
                offset = msg["clock_ns"] / 1e9 - msg["t"]  # room time -> monotonic
                self.finals.append(
                    (
                        a["speaker"],
                        a["start"] + offset,
                        a["end"] + offset,
                        time.monotonic(),
                        a["text"],
                    )
                )

    async def _add_speakers(self, n: int) -> None:
        while len(self.speakers) < n:
            i = len(self.speakers)
            user = f"sp{i}"
            c = RoomClient(self.base, user, http=self.http)
            await c.join(self.space)
            await self.host.act(self.space, "invite", target=user)
            await c.act(self.space, "accept_invite")
            sp = Speaker(i, user, c)
            sp.link = await connect_audio(
                c, self.space, self._on_rtp, publish=sp.track, slots=SLOTS
            )
            self.speakers.append(sp)

    async def _heard(self, n: int) -> None:
        """Only the first `n` speakers are heard (and captioned): the rest mute themselves."""
        for i, sp in enumerate(self.speakers):
            want = i >= n
            if sp.muted != want:
                await sp.client.act(self.space, "mute" if want else "unmute", target=sp.user)
                sp.muted = want

    async def _window(self) -> tuple[int, float]:
        m0, c0 = await scrape(self.http, self.base), _cpu_ns(self.pid)
        await asyncio.sleep(self.args.window)
        m1, c1 = await scrape(self.http, self.base), _cpu_ns(self.pid)
        fwd = m1["spacesim_packets_forwarded"] - m0["spacesim_packets_forwarded"]
        return c1 - c0, fwd

    async def _sfu_cost(self) -> tuple[float, float, float]:
        on: list[float] = []
        off: list[float] = []
        for _ in range(self.args.windows):
            for state, out in (("captions_off", off), ("captions_on", on)):
                await self.host.act(self.space, state)
                await asyncio.sleep(SETTLE_S)
                ns, fwd = await self._window()
                out.append(ns / 1000 / max(fwd, 1))
        mon, moff = statistics.median(on), statistics.median(off)
        print(f"  forwarding: captions off {moff:.1f} us/packet, on {mon:.1f} us/packet")
        return mon / moff, mon, moff

    async def _levels(self) -> list[dict[str, Any]]:
        args = self.args
        levels = sorted(set(args.streams))
        out = []
        await asyncio.sleep(HANGOVER_S + 2)  # the off/on toggles' last utterances settle
        n = levels[0]
        while True:
            await self._add_speakers(n)
            await self._heard(n)
            await asyncio.sleep(HANGOVER_S + 1)  # the muted ones' last utterances end
            t0 = time.monotonic()
            m0, w0 = await scrape(self.http, self.base), _worker_cpu_ns(self.pid)
            await asyncio.sleep(args.seconds)
            t1 = time.monotonic()
            m1, w1 = await scrape(self.http, self.base), _worker_cpu_ns(self.pid)
            await asyncio.sleep(1.0)

            def d(key: str, m0: dict[str, float] = m0, m1: dict[str, float] = m1) -> float:
                return m1.get(key, 0.0) - m0.get(key, 0.0)

            gaps = d("spacesim_captions_gaps")
            shed = d("spacesim_captions_partials_shed") + gaps
            backlog = m1.get("spacesim_captions_backlog_seconds", 0.0)
            saturated = shed > 0 or backlog > 1.0
            audio = d("spacesim_captions_audio_seconds")
            worker_s = (w1 - w0) / 1e9
            err = ref = 0
            lat: list[float] = []
            for sp in self.speakers[:n]:
                for clip, a, b in sp.phases_between(t0, t1 - SCORE_MARGIN_S):
                    got = [
                        f
                        for f in self.finals
                        if f[0] == sp.user and a - 0.5 <= (f[1] + f[2]) / 2 <= b + PAUSE_S
                    ]
                    said = words(transcripts()[clip])
                    heard = [w for f in sorted(got, key=lambda f: f[1]) for w in words(f[4])]
                    err += edits(said, heard)
                    ref += len(said)
                    lat += [(f[3] - f[2]) * 1000 for f in got]
            level = {
                "streams": n,
                "saturated": saturated,
                "shed": shed,
                "gaps": gaps,
                "backlog": backlog,
                "wer": 100 * err / max(ref, 1),
                "errors": err,
                "ref_words": ref,
                "lat": lat,
                "audio_s": audio,
                "worker_cpu_s": worker_s,
                "streams_per_core": audio / worker_s if worker_s > 0 else math.nan,
            }
            out.append(level)
            print(
                f"  {n} streams: WER {level['wer']:.1f} % ({ref} words), latency p95 "
                f"{nearest_rank(lat, 0.95):.0f} ms, {audio:.0f} audio s on "
                f"{worker_s:.1f} worker CPU s "
                f"({level['streams_per_core']:.1f} streams/core), shed {shed:.0f}, backlog "
                f"{backlog:.1f} s{' SATURATED' if saturated else ''}"
            )
            if saturated or n >= args.max_streams:
                return out
            bigger = [x for x in levels if x > n]
            n = bigger[0] if bigger else n * 2


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server, base = launch.start(
            Path(tmp) / "bench.db", args=["--caption-workers", str(args.caption_workers)]
        )
        try:
            launch.wait_up(server, base)
            rtc.use_host_addresses(["127.0.0.1"])
            run = Run(args, base, server.pid)
            return asyncio.run(asyncio.wait_for(run.main(), timeout=args.deadline))
        finally:
            launch.stop(server)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--caption-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--listeners", type=int, default=20)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--max-streams", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds per run, at most")
    ap.add_argument("--quick", action="store_true", help="one short run (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.seconds, args.windows, args.listeners = 1, 12.0, 2, 5
        args.streams, args.max_streams = [1, 2], 2
    runs = []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", flush=True)
        runs.append(one_run(args))

    def best(r: dict[str, Any]) -> dict[str, Any]:
        ok = [lv for lv in r["levels"] if not lv["saturated"]]
        return ok[-1] if ok else r["levels"][0]

    def unsaturated(r: dict[str, Any]) -> list[dict[str, Any]]:
        return [lv for lv in r["levels"] if not lv["saturated"]] or r["levels"][:1]

    def gapless(r: dict[str, Any]) -> list[dict[str, Any]]:
        return [lv for lv in r["levels"] if not lv["gaps"]] or r["levels"][:1]

    wer = statistics.median(
        100
        * sum(lv["errors"] for lv in gapless(r))
        / max(1, sum(lv["ref_words"] for lv in gapless(r)))
        for r in runs
    )
    lat = statistics.median(
        nearest_rank([x for lv in unsaturated(r) for x in lv["lat"]], 0.95) for r in runs
    )
    per_core = statistics.median(best(r)["streams_per_core"] for r in runs)
    kept = statistics.median(best(r)["streams"] for r in runs)
    ratio = statistics.median(r["sfu_ratio"] for r in runs)
    on = statistics.median(r["sfu_on_us"] for r in runs)
    off = statistics.median(r["sfu_off_us"] for r in runs)
    print(
        f"baseline: forwarding {off:.1f} us/packet with captions off, {on:.1f} with them on; "
        f"{args.caption_workers} worker(s) kept up with {kept:g} speaking streams here "
        f"({os.cpu_count()} cores shared with the server and the clients)"
    )
    print(f"FIGURE caption_wer={wer:.1f} %")
    print(f"FIGURE caption_latency_p95={lat:.0f} ms")
    print(f"FIGURE asr_streams_per_core={per_core:.1f} streams")
    print(f"FIGURE sfu_cost_with_captions={ratio:.2f} ratio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
