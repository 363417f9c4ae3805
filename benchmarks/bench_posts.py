"""Voice posts and Fleets on one server: upload + playback per core, and Fleet expiry.

Uploads: a real `spacesim serve` process on 127.0.0.1 (one event loop: one core, plus
the fsync in its thread pool, which counts too); ``--clients`` concurrent aiohttp
clients each upload a voice post (a real Ogg/Opus file muxed by FFmpeg through PyAV,
``--seconds`` of 32 kbit/s speech-band tone, streamed in 64 KiB chunks) and play it
back (GET of its audio), for ``--duration`` seconds. The server's CPU is read from
``/proc/PID/stat`` before and after; ``voice_uploads_per_core_s`` is the uploads
completed (each played back once) per CPU-second of the server process.

Expiry: ``--fleets`` Fleets in a SQLite store (their rows written in bulk, one
transaction, as a day's worth of posting would have left them; one in ``--voice-every``
with an audio file), the store's clock moved past their 24 h, then one sweep (the rows
in one transaction, then the files) timed. ``fleet_expiry_per_s`` is Fleets deleted
per second of that sweep.

Simulator: ``scenarios/voice-day.yaml`` (a week; ``--sim-users`` users, 100k as
shipped) simulated ``--sim-runs`` times; ``sim_days_per_minute`` is days of simulated
time per minute of wall time, the median run's.

Each figure is the median of ``--runs`` (3) runs, with a baseline measured in the same
run: ``voice_vs_text_posts`` is voice posts per server CPU-second over text posts (the
same clients writing and reading a short text post: the cost of the route, the token
check and the store without the audio), and ``sim_posts_cost`` is voice-day's wall time
over the same scenario with its posts model off.

Run: ``python benchmarks/bench_posts.py [--runs 3] [--clients 8] [--duration 10]
[--fleets 100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np

from spacesim.scenario import load_scenario
from spacesim.server import launch
from spacesim.server.captions import process_cpu
from spacesim.server.posts import FLEET_TTL_S, Posts
from spacesim.server.store_posts import _COLS
from spacesim.server.store_sqlite import SqliteStore
from spacesim.sim import simulate

ROOT = Path(__file__).resolve().parents[1]


def voice_file(path: Path, seconds: float) -> bytes:
    out = av.open(str(path), "w", format="ogg")
    stream: Any = out.add_stream("libopus", rate=48000)
    stream.bit_rate = 32000
    t = np.arange(int(48000 * seconds))
    x = (np.sin(2 * np.pi * (200 + 600 * (t % 48000) / 48000) * t / 48000) * 8000).astype(np.int16)
    for i in range(0, len(x), 960):
        frame = av.AudioFrame.from_ndarray(x[i : i + 960].reshape(1, -1), layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i, Fraction(1, 48000)
        for p in stream.encode(frame):
            out.mux(p)
    for p in stream.encode(None):
        out.mux(p)
    out.close()
    return path.read_bytes()


async def _tokens(base: str, users: list[str]) -> list[str]:
    async with aiohttp.ClientSession() as http:
        out = []
        for user in users:
            r = await http.post(f"{base}/v1/dev/token", json={"user": user})
            out.append((await r.json())["token"])
        return out


async def _client(
    base: str, tokens: list[str], data: bytes | None, until: float, done: list[float]
) -> None:
    """Upload and play back until `until`, rotating over `tokens`' users (each user's
    posts are throttled to a burst of 20: the clients stand for many users)."""
    async with aiohttp.ClientSession() as http:

        async def body() -> Any:
            for i in range(0, len(data), 65536):
                yield data[i : i + 65536]

        k = 0
        while time.monotonic() < until:
            auth = {"Authorization": f"Bearer {tokens[k % len(tokens)]}"}
            k += 1
            t0 = time.monotonic()
            if data is None:  # the baseline: a text post and reading it back
                r = await http.post(f"{base}/v1/posts", json={"text": "hello"}, headers=auth)
            else:
                r = await http.post(f"{base}/v1/posts/voice", data=body(), headers=auth)
            post = await r.json()
            if r.status == 429:
                continue
            assert r.status == 201, post
            if data is None:
                r = await http.get(f"{base}/v1/posts/{post['id']}", headers=auth)
                assert r.status == 200
                await r.read()
            else:
                r = await http.get(f"{base}{post['audio']['url']}", headers=auth)
                assert r.status == 200 and len(await r.read()) == len(data)
            done.append(time.monotonic() - t0)


async def uploads(
    clients: int, duration: float, seconds: float, tmp: Path, *, text: bool = False
) -> dict[str, float]:
    """Posts written and read back per server CPU-second: voice posts (upload + audio
    playback), or with `text` the baseline of the same clients posting and reading text."""
    data = None if text else voice_file(tmp / "voice.opus", seconds)
    db = tmp / f"posts-{time.monotonic_ns()}.db"
    proc, base = launch.start(db)
    try:
        await asyncio.to_thread(launch.wait_up, proc, base)
        tokens = [await _tokens(base, [f"u{k}-{j}" for j in range(50)]) for k in range(clients)]
        cpu0 = process_cpu(proc.pid) or 0.0
        t0 = time.monotonic()
        done: list[float] = []
        until = t0 + duration
        await asyncio.gather(*(_client(base, tokens[k], data, until, done) for k in range(clients)))
        wall = time.monotonic() - t0
        cpu = (process_cpu(proc.pid) or 0.0) - cpu0
    finally:
        proc.kill()
        proc.wait(timeout=10)
    return {
        "uploads": len(done),
        "wall_s": wall,
        "server_cpu_s": cpu,
        "bytes": len(data) if data is not None else 0,
        "median_ms": 1000 * float(np.median(done)) if done else float("nan"),
    }


def expiry(fleets: int, voice_every: int, tmp: Path) -> dict[str, float]:
    now = [1_800_000_000.0]
    store = SqliteStore(tmp / "fleets.db", clock=lambda: now[0])
    posts = Posts(tmp / "fleet-files", store, store.now)
    rows = []
    for i in range(fleets):
        voice = i % voice_every == 0
        pid = f"p-{i:016x}"
        if voice:
            posts.path(pid).write_bytes(b"OggS" + bytes(2000))
        created = now[0] + i * 0.001
        rows.append(
            (pid, f"u{i % 1000}", "fleet", "", created, None, None, created + FLEET_TTL_S)
            + ((2004, 1.0) if voice else (None, None))
            + (None, None)
        )
    with store._tx() as db:  # a day of posting, written at once (not what is measured)
        db.executemany(f"INSERT INTO posts ({_COLS}) VALUES ({', '.join('?' * 12)})", rows)
    now[0] += FLEET_TTL_S + fleets * 0.001 + 1
    t0 = time.perf_counter()
    n = posts.sweep()
    elapsed = time.perf_counter() - t0
    left = len(list(posts.root.glob("*.opus")))
    store.close()
    assert n == fleets and left == 0, (n, left)
    return {"fleets": n, "files": -(-fleets // voice_every), "elapsed_s": elapsed}


def sim_days(users: int, runs: int, *, posts: bool = True) -> dict[str, float]:
    """Days of simulated time per wall minute over `runs` simulations of voice-day (the
    baseline, `posts` False: the same scenario with its posts model off)."""
    sc = load_scenario(ROOT / "scenarios" / "voice-day.yaml")
    n = users if posts else 0
    sc = sc.model_copy(update={"posts": sc.posts.model_copy(update={"users": n})})
    walls = []
    for seed in range(runs):
        t0 = time.perf_counter()
        simulate(sc, seed=seed)
        walls.append(time.perf_counter() - t0)
    wall = float(np.median(walls))
    return {"days": sc.duration / 86400, "wall_s": wall, "per_min": sc.duration / 86400 / wall * 60}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=30.0, help="audio per voice post")
    ap.add_argument("--fleets", type=int, default=100_000)
    ap.add_argument("--voice-every", type=int, default=10, help="one Fleet in N has audio")
    ap.add_argument("--sim-users", type=int, default=100_000)
    ap.add_argument("--sim-runs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="server runs (uploads, expiry): median")
    args = ap.parse_args(argv)
    ups, texts, exps = [], [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for k in range(args.runs):  # voice and its text baseline alternate within a run
            run = tmp / f"run{k}"
            run.mkdir()
            up = asyncio.run(uploads(args.clients, args.duration, args.seconds, run))
            tx = asyncio.run(uploads(args.clients, args.duration, args.seconds, run, text=True))
            ex = expiry(args.fleets, args.voice_every, run)
            ups.append(up["uploads"] / up["server_cpu_s"] if up["server_cpu_s"] > 0 else math.nan)
            texts.append(tx["uploads"] / tx["server_cpu_s"] if tx["server_cpu_s"] > 0 else math.nan)
            exps.append(ex["fleets"] / ex["elapsed_s"])
            print(
                f"run {k + 1}: {up['uploads']:.0f} voice posts of {up['bytes'] / 1024:.0f} KiB "
                f"({args.seconds:g} s) uploaded and played back in {up['wall_s']:.1f} s by "
                f"{args.clients} clients, server CPU {up['server_cpu_s']:.2f} s "
                f"({ups[-1]:.1f} per CPU-s; median {up['median_ms']:.0f} ms); baseline: "
                f"{tx['uploads']:.0f} text posts written and read, {texts[-1]:.1f} per CPU-s; "
                f"expiry: {ex['fleets']:.0f} Fleets ({ex['files']:.0f} with audio files) "
                f"deleted in {ex['elapsed_s']:.2f} s",
                flush=True,
            )
    sim = sim_days(args.sim_users, args.sim_runs)
    base = sim_days(args.sim_users, args.sim_runs, posts=False)
    print(
        f"simulator: voice-day, {args.sim_users} users, {sim['days']:g} days simulated in "
        f"{sim['wall_s']:.2f} s (median of {args.sim_runs}); baseline, the same scenario "
        f"without posts: {base['wall_s']:.2f} s"
    )
    per_core = float(np.median(ups))
    print(f"FIGURE voice_uploads_per_core_s={per_core:.1f} per_s")
    print(f"FIGURE voice_vs_text_posts={per_core / float(np.median(texts)):.3f} ratio")
    print(f"FIGURE fleet_expiry_per_s={float(np.median(exps)):.0f} per_s")
    print(f"FIGURE sim_days_per_minute={sim['per_min']:.0f} days")
    print(f"FIGURE sim_posts_cost={sim['wall_s'] / base['wall_s']:.2f} ratio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
