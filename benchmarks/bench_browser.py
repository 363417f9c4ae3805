"""Browser probes against aiortc probes in one load run: mouth-to-ear and a probe's CPU.

What runs: ``spacesim load`` (`spacesim.load.run.main`) against its embedded reference
server on 127.0.0.1, ``--shape steady --network none``: one space whose host is its one
speaker (talking in long spurts), ``--lite`` lite listeners plus about ``--probes``
aiortc probes (``load.probe_fraction`` = probes / listeners: each listener draws, so the
count varies; the figure says how many there were) and ``--browsers`` browser probes
(``load.browser_probes``: one headless Chromium, a context each). Listeners spawn at
10/s; the figures use records from ``--settle`` s on.

Figures (all from the run's records):

* browser mouth-to-ear p50 / p95 (``browser_mouth_to_ear``: arrival at the page's
  encoded transform on the speaker's clock - mark + NetEq's delay per emitted sample +
  Chromium's reported playout delay) and the aiortc probes' (``mouth_to_ear``: network
  + server + aiortc's fixed jitter buffer + decode), and their p50 ratio;
* NetEq's delay per emitted sample and the aiortc jitter buffer's hold, p50;
* one browser probe's CPU: the Chromium processes' CPU time (utime + stime from /proc,
  all of the helper's Chromium descendants: browser, renderers, GPU and audio
  utility processes) per second of wall time, divided by the probes, mean per tick.

The machine's load average is printed before and after: on a shared machine the
latencies include whatever else ran.

Run: ``python benchmarks/bench_browser.py [--lite 100] [--probes 4] [--browsers 2]
[--seconds 60] [--settle 15]``.

Recorded 2026-12-07 (2 cores shared with other work: load average 1.9-2.9 before and
after each run), defaults, three runs; median (range): browser mouth-to-ear p50
102 ms (87-108), p95 163 ms (114-245); aiortc probes' mouth-to-ear p50 81.5 ms
(81.4-84.4), p95 88 ms (85.5-94); ratio 1.26 (1.07-1.28); NetEq 69 ms (53-75)
against aiortc's 80 ms; Chromium's reported playout delay a constant 30 ms (headless,
no sound device: its fake output); arrival (aiortc ``audio_latency``) 2.3-2.6 ms;
nothing concealed or lost; one browser probe 0.074 cores (0.074-0.080). The aiortc
probes heard were 1, 3 and 1 (each listener draws ``probe_fraction``). So on loopback
NetEq holds a little less than aiortc's fixed buffer, and the playout delay puts
the browser 5-25 ms behind; its p95 is wider because NetEq's target moves with the
jitter it sees (the swarm's own loop lag, 13-33 ms p95, is part of that jitter).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

from spacesim.load.run import main as load_main
from spacesim.results import load_run, summarise

SCENARIO = """\
name: bench-browser
duration: 10m
rooms: {{count: 1, speakers: 0}}
speaking: {{active_speakers: 1, talk_spurt: 30s, pause: 500ms}}
arrivals: {{kind: constant, rate: 1/s}}
session: {{kind: fixed, mean: 10m}}
audience: {{hand_raise_rate: 0/h, reaction_rate: 0/min, report_rate: 0/h, block_rate: 0/h,
           events_share: 0}}
load: {{probe_fraction: {fraction}, browser_probes: {browsers}}}
"""


def _ms(v: float) -> str:
    return f"{v * 1e3:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lite", type=int, default=100)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--browsers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured run time")
    ap.add_argument("--settle", type=float, default=15.0, help="spawn and settle time")
    ap.add_argument("--out", help="keep the run here (default: a temporary directory)")
    a = ap.parse_args(argv)
    listeners = a.lite + a.probes
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(
            SCENARIO.format(fraction=round(a.probes / listeners, 4), browsers=a.browsers)
        )
        out = Path(a.out) if a.out else Path(tmp) / "run"
        rc = load_main(
            path, users=1 + listeners, duration=a.settle + a.seconds, out=out,
            spawn_rate=10, shape="steady", network="none",
        )  # fmt: skip
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if rc != 0:
            print(f"spacesim load exited {rc}", file=sys.stderr)
            return 1
        rec = load_run(out).records
    rec = rec[rec["t"] >= a.settle]
    s = summarise(rec)
    aiortc = rec.loc[rec["kind"] == "mouth_to_ear", "participant"].nunique()
    browsers = rec.loc[rec["kind"] == "browser_mouth_to_ear", "participant"].nunique()
    cpu = rec[rec["kind"] == "browser_cpu"]
    probes = cpu["attrs"].map(lambda x: json.loads(x)["probes"]).astype(float)
    per_probe = float((cpu["value"] / probes).mean())

    def get(metric: str, stat: str) -> float:
        return float(pd.to_numeric(s[stat].get(metric), errors="coerce"))

    b50, b95 = get("browser_mouth_to_ear", "p50"), get("browser_mouth_to_ear", "p95")
    p50, p95 = get("mouth_to_ear", "p50"), get("mouth_to_ear", "p95")
    print(f"aiortc probes heard: {aiortc}; browser probes heard: {browsers}")
    print(f"mouth to ear, browser probes: p50 {_ms(b50)} ms, p95 {_ms(b95)} ms")
    print(f"mouth to ear, aiortc probes:  p50 {_ms(p50)} ms, p95 {_ms(p95)} ms")
    print(
        f"jitter buffer p50: NetEq {_ms(get('browser_jitter_buffer', 'p50'))} ms, "
        f"aiortc {_ms(get('client_buffer', 'p50'))} ms; browser playout p50 "
        f"{_ms(get('browser_playout', 'p50'))} ms; concealed p50 "
        f"{get('browser_concealed', 'p50'):.2%}"
    )
    print(
        f"audio_latency p50 (aiortc, arrival only) {_ms(get('audio_latency', 'p50'))} ms; "
        f"swarm loop lag p95 {_ms(get('loop_lag', 'p95'))} ms"
    )
    print(f"FIGURE browser_mouth_to_ear_p50={b50 * 1e3:.1f} ms")
    print(f"FIGURE browser_vs_probe_p50={b50 / p50:.2f} ratio")
    print(f"FIGURE browser_probe_cores={per_probe:.3f} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
