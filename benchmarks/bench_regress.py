"""How often does `spacesim regress` cry wolf, and does it catch a real +30 %?

Runs N interleaved A/B comparisons exactly as ``spacesim regress --against`` does
(this checkout against itself, so every verdict of "regression" is a false alarm),
and, in between, comparisons where the current server carries the test-only fault
hook calibrated to +30 % CPU per forwarded packet (``SLOWDOWN`` x the median CPU per
packet of the first clean comparison's runs). Prints one line per comparison and,
at the end::

    cpu_per_packet false_alarms=<n> of 20
    ...
    detection cpu_per_packet: <k> of <m> comparisons at +30 % (<us> us per packet)

Each comparison is 2 x --repeat runs of ~25 s: the default (20 clean + 5 faulty,
repeat 3) takes about an hour on a 2-core machine. Results are appended to
OUT/comparisons.jsonl as they come, so an interrupted run still tells something.

    .venv/bin/python benchmarks/bench_regress.py --clean 20 --faulty 5 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from spacesim import regress

ROOT = Path(__file__).resolve().parents[1]


def recount(path: Path) -> int:
    """Judge stored comparisons again with `regress.FIGURES` as they are now."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    alarms = {f.name: 0 for f in regress.FIGURES}
    caught = {f.name: 0 for f in regress.FIGURES}
    any_alarm = any_caught = 0
    for row in rows:
        results = regress.compare_all(regress.FIGURES, row["base"], row["now"])
        hit = [c.figure.name for c in results if c.regressed]
        for name in hit:
            (caught if row["faulty"] else alarms)[name] += 1
        if row["faulty"]:
            any_caught += bool(hit)
        else:
            any_alarm += bool(hit)
    clean = sum(not r["faulty"] for r in rows)
    faulty = len(rows) - clean
    for name, n in alarms.items():
        print(f"{name} false_alarms={n} of {clean}")
    print(f"gate false_alarms={any_alarm} of {clean}")
    for name, n in caught.items():
        print(f"detection {name}: {n} of {faulty}")
    print(f"gate detection: {any_caught} of {faulty}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clean", type=int, default=20, help="A/A comparisons (false alarms)")
    ap.add_argument("--faulty", type=int, default=5, help="comparisons with the fault (detection)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per side, as in .ci/run")
    ap.add_argument("--slowdown", type=float, default=0.30, help="injected CPU per packet")
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "ci-regression.yaml"))
    ap.add_argument("--out", default=f"runs/bench-regress-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument(
        "--recount",
        metavar="JSONL",
        help="only re-judge a run's comparisons.jsonl with "
        "today's tolerances (each line keeps every run's figures)",
    )
    args = ap.parse_args()
    if args.recount:
        return recount(Path(args.recount))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenario = Path(args.scenario)
    ref = regress.Side("ref", ROOT, fault=False)
    now = regress.Side("now", None, fault=True)
    regress.check_side(ref)
    os.environ.pop(regress.FAULT_ENV, None)
    # faulty comparisons spread among the clean ones, the first one always clean
    total = args.clean + args.faulty
    every = max(2, total // max(args.faulty, 1))
    plan = [i % every == every - 1 and i // every < args.faulty for i in range(total)]
    busy_us: float | None = None
    alarms = {f.name: 0 for f in regress.FIGURES}
    caught = {f.name: 0 for f in regress.FIGURES}
    done_clean = done_faulty = 0
    t_start = time.monotonic()
    for i, faulty in enumerate(plan):
        if faulty and busy_us is not None:
            os.environ[regress.FAULT_ENV] = f"{busy_us:.2f}"
        else:
            os.environ.pop(regress.FAULT_ENV, None)
            faulty = False
        t = time.monotonic()
        base, cur = regress.run_series(
            scenario, [ref, now], args.repeat, out / f"c{i:02d}", say=lambda m: None
        )
        if busy_us is None:
            busy_us = args.slowdown * statistics.median(base["cpu_per_packet"]) * 1e6
        results = regress.compare_all(regress.FIGURES, base, cur)
        line = {
            "comparison": i,
            "faulty": faulty,
            "busy_us": busy_us if faulty else 0.0,
            "seconds": round(time.monotonic() - t, 1),
            "verdicts": {c.figure.name: c.verdict for c in results},
            "change": {c.figure.name: [c.change, c.low, c.high] for c in results},
            "base": base,
            "now": cur,
        }
        with open(out / "comparisons.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
        for c in results:
            if c.regressed:
                (caught if faulty else alarms)[c.figure.name] += 1
        done_faulty += faulty
        done_clean += not faulty
        cpu = next(c for c in results if c.figure.name == "cpu_per_packet")
        kind = f"+{args.slowdown:.0%}" if faulty else "clean"
        print(
            f"comparison {i + 1}/{total} ({kind}, {line['seconds']:.0f} s): "
            f"cpu_per_packet {cpu.change:+.1%} "
            f"[{cpu.low:+.1%} … {cpu.high:+.1%}] {cpu.verdict}; others "
            + ", ".join(f"{c.figure.name}={c.verdict}" for c in results[1:]),
            flush=True,
        )
    os.environ.pop(regress.FAULT_ENV, None)
    print(f"\n{done_clean} clean and {done_faulty} faulty comparisons, "
          f"{args.repeat} runs a side, {(time.monotonic() - t_start) / 60:.0f} min")  # fmt: skip
    for name, n in alarms.items():
        print(f"{name} false_alarms={n} of {done_clean}")
    for name, n in caught.items():
        print(f"detection {name}: {n} of {done_faulty} comparisons at "
              f"+{args.slowdown:.0%} ({busy_us or 0:.1f} us per packet)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
