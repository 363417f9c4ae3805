"""Browser probes (``load.browser_probes``): Chromium listeners in a load run.

`spacesim load` starts this module as a helper process next to Locust (playwright's
API wants a plain asyncio loop, and Locust's processes are gevent-patched). The helper
starts one headless Chromium with a browser context per probe; each opens a page of the
server's origin, injects ``probe.js``, joins one of the swarm's live spaces as a listener
and plays it. Every second the helper reads each page's marks and ``getStats`` counters
and turns them into records (`tick_records`), written as ``OUT/part-browser-<pid>.parquet``
beside the Locust processes' parts, which `spacesim load` merges into the run.

Browser mouth-to-ear of one marked packet = (its arrival at the page's encoded
transform, on the server's monotonic clock - the speaker's mark) + NetEq's jitter
buffer delay per emitted sample in that second (getStats ``jitterBufferDelay /
jitterBufferEmittedCount``, deltas) + the audio output's playout delay when Chromium
reports it (``media-playout``: ``totalPlayoutDelay / totalSamplesCount``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from spacesim.results import Recorder, Row

__all__ = [
    "FLAGS",
    "BrowserUnavailable",
    "Counters",
    "chromium_cpu_seconds",
    "ensure_chromium",
    "find_chromium",
    "main",
    "tick_records",
]

PROBE_JS = Path(__file__).with_name("probe.js")
SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup-test-deps.sh"
CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
#: Headless Chromium on a machine without audio hardware or display. Unlike the page
#: tests (tests/browser), a probe has no user to click Join: autoplay is allowed so its
#: <audio> elements play, and so NetEq is pulled as a listening user's would be.
FLAGS = (
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
    "--disable-gpu",
    "--autoplay-policy=no-user-gesture-required",
)
MARK_SAMPLES = 10  # browser_mouth_to_ear records per probe per second (as aiortc probes)
TICK = 1.0
JOIN_TIMEOUT = 30.0
ROLE = "listener"
ATTRS = {"client": "browser"}


class BrowserUnavailable(Exception):
    """No Chromium, and the project's setup script could not install one."""


def find_chromium() -> str | None:
    """$SPACESIM_CHROMIUM, else Debian's (or Ubuntu's) Chromium, else None."""
    named = os.environ.get("SPACESIM_CHROMIUM")
    for path in (named, *CANDIDATES):
        if path and os.access(path, os.X_OK):
            return path
    return None


def ensure_chromium(setup: Path = SETUP) -> str:
    """A Chromium executable; runs scripts/setup-test-deps.sh once if there is none."""
    path = find_chromium()
    if path is not None:
        return path
    if not setup.is_file():
        raise BrowserUnavailable(
            "browser probes need Chromium: install it (apt-get install chromium) or set "
            "SPACESIM_CHROMIUM to its path"
        )
    bash = shutil.which("bash") or "/bin/bash"
    proc = subprocess.run([bash, str(setup)], capture_output=True, text=True, timeout=900)
    path = find_chromium()
    if path is None:
        raise BrowserUnavailable(
            f"browser probes need Chromium and {setup} could not install it "
            f"(exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[-1000:]}"
        )
    return path


# --------------------------------------------------------------------------- records


Counters = Mapping[str, Any]


def _delta(now: Counters, prev: Counters | None, key: str) -> float:
    return float(now.get(key) or 0) - float((prev or {}).get(key) or 0)


def tick_records(
    t: float,
    space: str,
    user: str,
    sample: Mapping[str, Any],
    prev: Mapping[str, Any] | None,
    samples: int = MARK_SAMPLES,
) -> list[Row]:
    """One probe's records for one second, from `probe.js`'s ``take()`` now and before.

    `sample` has ``marks`` ([mid, sender, seq, t_ns, arrival_ns] per marked packet since
    the last take), ``inbound`` (cumulative inbound-rtp counters per listen slot, by
    ``mid``) and ``playout`` (cumulative media-playout counters, or None); `prev` is the
    previous take (None at the first). Rows: ``browser_jitter_buffer`` (per emitted
    sample, all slots), ``browser_concealed``, ``browser_packets_lost``,
    ``browser_playout`` (when reported) and up to `samples` ``browser_mouth_to_ear``.
    """
    rows: list[Row] = []
    attrs = '{"client": "browser"}'
    before = {s.get("mid"): s for s in (prev or {}).get("inbound", [])}
    neteq: dict[Any, float] = {}
    delay = emitted = concealed = received = lost = 0.0
    for s in sample.get("inbound", []):
        p = before.get(s.get("mid"))
        d_delay = _delta(s, p, "jitterBufferDelay")
        d_emitted = _delta(s, p, "jitterBufferEmittedCount")
        if d_emitted > 0:
            neteq[s.get("mid")] = d_delay / d_emitted
        delay += d_delay
        emitted += d_emitted
        concealed += _delta(s, p, "concealedSamples")
        received += _delta(s, p, "totalSamplesReceived")
        lost += max(0.0, _delta(s, p, "packetsLost"))
    if emitted > 0:
        rows.append(("browser_jitter_buffer", t, space, user, ROLE, delay / emitted, attrs))
    if received > 0:
        rows.append(("browser_concealed", t, space, user, ROLE, concealed / received, attrs))
    if sample.get("inbound"):
        rows.append(("browser_packets_lost", t, space, user, ROLE, lost, attrs))
    playout = 0.0
    now_p, prev_p = sample.get("playout"), (prev or {}).get("playout")
    if now_p:
        d_count = _delta(now_p, prev_p, "totalSamplesCount")
        if d_count > 0:
            playout = _delta(now_p, prev_p, "totalPlayoutDelay") / d_count
            rows.append(("browser_playout", t, space, user, ROLE, playout, attrs))
    marks = [m for m in sample.get("marks", []) if m[0] in neteq]
    step = max(1, len(marks) // samples) if samples > 0 else len(marks) + 1
    for mid, _sender, _seq, t_ns, arrival_ns in marks[::step][:samples]:
        network = (float(arrival_ns) - float(t_ns)) / 1e9
        rows.append(
            ("browser_mouth_to_ear", t, space, user, ROLE, network + neteq[mid] + playout, attrs)
        )
    return rows


def chromium_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of `root`'s descendants whose name says chromium,
    read from /proc (0.0 where /proc cannot be read)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            rest = text[text.rindex(")") + 2 :].split()
            ppid = int(rest[1])
            cpu = (int(rest[11]) + int(rest[12])) / ticks  # utime, stime (proc(5))
            pid = int(entry.name)
            children.setdefault(ppid, []).append(pid)
            stats[pid] = (name, cpu)
    total, todo = 0.0, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        name, cpu = stats.get(pid, ("", 0.0))
        if "chrom" in name.lower():
            total += cpu
        todo += children.get(pid, [])
    return total


# --------------------------------------------------------------------------- helper


async def _live_spaces(session: aiohttp.ClientSession, url: str, token: str) -> list[str]:
    async with session.get(
        f"{url}/v1/spaces?status=live", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        data = await resp.json()
    # Oldest first: the swarm's spaces (hosts start them before listeners arrive).
    return [s["id"] for s in reversed(data.get("spaces", []))]


async def _wait_spaces(url: str, until: float, stop: asyncio.Event) -> list[str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/dev/token", json={"user": "browser-probe"}) as r:
            token = (await r.json())["token"]
        while time.monotonic() < until and not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, ValueError, KeyError):
                if spaces := await _live_spaces(session, url, token):
                    return spaces
            await asyncio.sleep(0.5)
    return []


def _say(msg: str) -> None:
    print(f"spacesim load (browser probes): {msg}", file=sys.stderr, flush=True)


def _write(out: Path, rec: Recorder) -> None:
    if not len(rec):
        return
    out.mkdir(parents=True, exist_ok=True)
    name = f"browser-{os.getpid()}"
    tmp = out / f".part-{name}.parquet.tmp"
    rec.to_frame().to_parquet(tmp, index=False)
    tmp.replace(out / f"part-{name}.parquet")


async def run_probes(
    url: str,
    probes: int,
    seconds: float,
    out: Path,
    run_id: str,
    t0: float,
    chromium: str,
) -> int:
    """The helper's work; returns 0 if every probe joined, 1 otherwise."""
    from playwright.async_api import async_playwright

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    until = time.monotonic() + seconds
    rec = Recorder(run_id, "load")
    spaces = await _wait_spaces(url, until, stop)
    if not spaces:
        _say("no live space appeared: no browser probe joined")
        return 1
    # a live space: the swarm has started, so the run's time zero is settled (load.state)
    from spacesim.load.state import read_t0

    t0_file = os.environ.get("SPACESIM_T0_FILE")
    started = read_t0(Path(t0_file)) if t0_file else None
    if started is not None:  # the probes last as long as the swarm, from its start
        t0 = started
        until = time.monotonic() + max(0.0, t0 + seconds - time.time())
    js = PROBE_JS.read_text(encoding="utf-8")
    cpu_mark = (time.monotonic(), chromium_cpu_seconds(os.getpid()))
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=list(FLAGS))
        pages: list[tuple[Any, str, str]] = []
        failed = 0
        for i in range(probes):
            space, user = spaces[i % len(spaces)], f"browser-probe-{i}"
            context = await browser.new_context()
            page = await context.new_page()
            try:
                await page.goto(f"{url}/healthz")  # the server's origin, an empty page
                await page.add_script_tag(content=js)
                joined = await asyncio.wait_for(
                    page.evaluate("a => spacesimProbe.start(a)", {"user": user, "spaceId": space}),
                    JOIN_TIMEOUT,
                )
            except Exception as exc:  # a probe that cannot join is reported
                _say(f"{user} could not join {space}: {exc}")
                failed += 1
                continue
            _say(f"{user} joined {space} (clock offset rtt {joined['rtt_ms']:.2f} ms)")
            pages.append((page, space, user))
        prev: dict[str, Any] = {}
        last_write = time.monotonic()
        while pages and not stop.is_set() and time.monotonic() < until:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK)
            t = time.time() - t0
            for page, space, user in pages:
                try:
                    sample = await page.evaluate("spacesimProbe.take()")
                except Exception as exc:  # a closed page ends its probe
                    _say(f"{user}: {exc}")
                    continue
                for row in tick_records(t, space, user, sample, prev.get(user)):
                    rec.append(row)
                prev[user] = sample
            now = time.monotonic()
            cpu = chromium_cpu_seconds(os.getpid())
            if now > cpu_mark[0]:
                rec.add("browser_cpu", t, "", "", "", (cpu - cpu_mark[1]) / (now - cpu_mark[0]),
                        {"client": "browser", "probes": len(pages)})  # fmt: skip
            cpu_mark = (now, cpu)
            if now - last_write > 10:
                _write(out, rec)
                last_write = now
        for page, _, _ in pages:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(page.evaluate("spacesimProbe.leave()"), 5)
        with contextlib.suppress(Exception):
            await browser.close()
    _write(out, rec)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spacesim.load.browser")
    ap.add_argument("--url", required=True)
    ap.add_argument("--probes", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", required=True, help="the run's parts directory")
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--t0", type=float, required=True, help="the run's start, unix seconds")
    ap.add_argument("--chromium", required=True)
    a = ap.parse_args(argv)
    return asyncio.run(
        run_probes(a.url, a.probes, a.seconds, Path(a.out), a.run_id, a.t0, a.chromium)
    )


if __name__ == "__main__":
    sys.exit(main())
