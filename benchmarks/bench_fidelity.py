"""Sim-vs-real fidelity: the swarm and the calibrated simulator on the same scenario.

What runs (all on 127.0.0.1; every load run bounded in users and time):

1. ``spacesim load scenarios/fidelity.yaml`` (one room, the host speaking, listeners
   who stay) at each load level, ``-u N+1 -r SPAWN -t DURATION --shape steady
   --network none``, with the embedded
   server recording its own CPU and packets (``OUT/load-NNN``); plus one run with two
   speakers at the 2nd level (``OUT/load-duo-NNN``), which separates CPU per packet
   from CPU per connection (with one speaker they are proportional); it feeds the CPU
   fit only, since it loads the swarm twice as hard per listener;
2. ``spacesim calibrate`` on a subset of those runs (the 1st, 3rd and 5th level and
   the duo run by default: the 2nd and 4th levels are out of sample) ->
   ``OUT/calibration.yaml``;
3. ``spacesim simulate`` of the same scenario at each level with the calibration
   (constant arrivals at the spawn rate, ``rooms.listener_cap`` = N, every listener
   sampled) -> ``OUT/sim-NNN``;
4. per level, both runs' steady windows are summarised the same way
   (`spacesim.analysis.fidelity`) and compared: relative error of p50 / p95
   publisher -> listener latency, delivery ratio and mean server CPU ->
   ``OUT/errors.csv`` and ``OUT/fidelity.json``; the last line is
   ``FIGURE fidelity_max_error=<n> %``.

What the model can and cannot capture (read the errors with this in mind): on
loopback, latency is server fan-out plus the kernel's delivery to the listener's
socket. Since 2026-12-06 listeners take each packet's kernel receive time
(``SO_TIMESTAMPNS``, `spacesim.rtc.BatchReader`), so the swarm's own event-loop
stalls (garbage collection, other processes on this 2-core machine) no longer enter
the latency it reports; before, they put tens to hundreds of milliseconds into a few
seconds of a run and made p95 errors of 33-57 % (below). What is left of the rig in
the figures: server and swarm share two cores, so the server's fan-out is slowed
when the swarm is busy, and the calibrated `fanout_delay` includes that.

Measured on 2026-12-06 (quiet machine; same levels and calibration set), with kernel
receive times: ``fidelity_max_error`` = 23.2 %. Server CPU 2.0-9.2 % at every level;
delivery 0 %; p50 latency 1.6-12.3 %; p95 latency 6.6-23.2 % (23.2 % at 10 listeners,
where p95 is 0.84 ms measured against 0.64 ms simulated: 0.2 ms); the swarm kept up
at every level (loop lag p95 2-24 ms). The 10 % target holds for server CPU, for
delivery and for p50 above 10 listeners; not yet for p95.

Earlier, on 2026-11-25, with arrival times read in the socket callback (2 cores shared
with other agents' benchmarks, load average 5-7; levels 10, 25, 50, 80, 120;
calibrated from 10, 50, 120 + duo-25): cpu_fixed 0.033 cores, cpu_per_packet 25.5 us,
cpu_per_join 5.0 ms,
cpu_per_connection 0 (absorbed by the packet cost), forward_delay 1.19 ms,
fanout_delay 117 us; CPU fit rms 0.015 cores, R^2 0.93 (98 s); latency fit rms 0.20 ms,
R^2 0.96. Errors: server CPU 4-11 % at every level; delivery 0 %; p50 latency
0.1 / 3.6 / 6.8 / 11.6 % at 10-80 listeners; p95 latency 33-57 % too low at 10-80
(the measured tail above ~p80 is the swarm's stalls: its loop lag p95 was 16-52 ms);
at 120 the swarm fell behind (a 0.56 s median backlog), so that level's latencies are
off by ~99 % and measure the load generator. ``fidelity_max_error`` = 99.6 %, 57 %
where the swarm kept up. The 10 % target holds for server CPU, delivery and
(nearly) p50; it does not hold for p95 on this rig.

Run: ``python benchmarks/bench_fidelity.py [--levels 10,25,50,80,120] [--duration 25]
[--spawn 25] [--out runs/fidelity] [--reuse] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from spacesim.analysis.fidelity import (
    METRICS,
    level_metrics,
    open_level,
    relative_errors,
)
from spacesim.results import write_run
from spacesim.scenario import load_scenario
from spacesim.sim import simulate
from spacesim.sim.calibrate import (
    apply_calibration,
    calibrate,
    swarm_behind,
    swarm_loop_lag,
    swarm_pace,
)

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "fidelity.yaml"
LEVELS = (10, 25, 50, 80, 120)
DURATION = 25.0
SPAWN = 25.0
TARGET = 0.10  # the target: every relative error within 10 %
GRACE = 120.0  # seconds past a load run's duration before it is killed


def _say(msg: str) -> None:
    print(f"bench_fidelity: {msg}", file=sys.stderr, flush=True)


def duo_scenario(out: Path) -> Path:
    """The fidelity scenario with two speakers talking (twice the packets per listener)."""
    sc = load_scenario(SCENARIO, ["name=fidelity-duo", "rooms.speakers=1"])
    sc = sc.model_copy(update={"speaking": sc.speaking.model_copy(update={"active_speakers": 2})})
    path = out / "fidelity-duo.yaml"
    path.write_text(sc.to_yaml(), encoding="utf-8")
    load_scenario(path)  # the file must stand on its own
    return path


def load_level(
    out: Path, scenario: Path, n: int, duration: float, spawn: float, name: str, reuse: bool
) -> Path:
    """One `spacesim load` run with n listeners (and the host); its output -> NAME.log."""
    d = out / name
    if reuse and (d / "meta.json").is_file():
        _say(f"{name}: reusing {d}")
        return d
    cmd = [
        sys.executable,
        "-m",
        "spacesim.cli",
        "load",
        str(scenario),
        "-u",
        str(n + 1),
        "-r",
        f"{spawn:g}",
        "-t",
        f"{duration:g}s",
        "--out",
        str(d),
        "--shape",
        "steady",  # N listeners throughout, started at the spawn rate
        "--network",
        "none",  # plain loopback: the scenario's network is zero anyway
    ]
    _say(f"{name}: {n} listeners for {duration:g} s")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    with open(out / f"{name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=duration + GRACE
        )
    if proc.returncode != 0 or not (d / "meta.json").is_file():
        raise RuntimeError(f"{name}: spacesim load exited {proc.returncode}; see {name}.log")
    return d


def simulate_level(
    out: Path, calibration: Path, n: int, duration: float, spawn: float, seed: int
) -> Path:
    """The same level in the simulator, with the calibrated server."""
    overrides = [
        f"duration={duration}",
        f"arrivals.rate={spawn}",
        f"rooms.listener_cap={n}",
        f"sim.latency_sample={n}",
    ]
    sc = apply_calibration(load_scenario(SCENARIO, overrides), calibration)
    run = simulate(sc, seed=seed)
    d = out / f"sim-{n:03d}"
    if (d / "meta.json").is_file():
        (d / "meta.json").unlink()  # a rerun replaces the simulated level
    write_run(d, run.records, run.meta)
    return d


def compare(out: Path, levels: Sequence[int], fitted: set[int]) -> pd.DataFrame:
    """Errors per level and metric -> OUT/errors.csv."""
    frames = []
    for n in levels:
        measured = open_level(out / f"load-{n:03d}")
        real = level_metrics(measured)
        sim = level_metrics(open_level(out / f"sim-{n:03d}"))
        e = relative_errors(real, sim)
        e.insert(0, "listeners", n)
        e["in_fit"] = n in fitted
        e["swarm_pace"] = swarm_pace(measured.run)
        e["swarm_loop_lag"] = swarm_loop_lag(measured.run)
        e["swarm_behind"] = swarm_behind(measured.run) or ""
        frames.append(e)
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out / "errors.csv", index=False)
    return table


def _show(x: float, unit: str) -> str:
    if math.isnan(x):
        return "-"
    if unit == "s":
        return f"{x * 1000:.2f} ms"
    if unit == "ratio":
        return f"{x:.4f}"
    return f"{x:.3f}"


def print_table(table: pd.DataFrame) -> None:
    print(
        f"{'N':>4} {'fit':>3} {'pace':>5} {'lag95':>6}  {'metric':<15} {'measured':>11} "
        f"{'simulated':>11} "
        f"{'error':>8}"
    )
    for row in table.itertuples(index=False):
        label, unit = METRICS[str(row.metric)]
        flag = "*" if row.rel_error > TARGET else " "
        print(
            f"{row.listeners:>4} {'yes' if row.in_fit else 'no':>3} {row.swarm_pace:>5.2f} "
            f"{row.swarm_loop_lag * 1000:>4.0f}ms  "
            f"{label:<15} "
            f"{_show(row.measured, unit):>11} {_show(row.simulated, unit):>11} "
            f"{row.rel_error:>7.1%}{flag}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="listeners per level")
    ap.add_argument("--duration", type=float, default=DURATION, help="seconds per load run")
    ap.add_argument("--spawn", type=float, default=SPAWN, help="listeners started per second")
    ap.add_argument("--out", default="runs/fidelity", help="directory for runs and tables")
    ap.add_argument("--fit", help="levels to calibrate from (default: 1st, 3rd, 5th + duo)")
    ap.add_argument("--no-duo", action="store_true", help="skip the two-speaker run")
    ap.add_argument("--reuse", action="store_true", help="reuse load runs already in --out")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument(
        "--quick", action="store_true", help="2 tiny levels, 6 s each (for the notebook's CI run)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.levels, args.duration, args.spawn, args.no_duo = "3,6", 6.0, 20.0, True
    levels = sorted({int(x) for x in args.levels.split(",")})
    fit = (
        {int(x) for x in args.fit.split(",")}
        if args.fit
        else set(levels[::2])
        if len(levels) > 2
        else set(levels)
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall0 = time.monotonic()

    machine: dict[str, object] = {}
    for n in levels:
        load_level(out, SCENARIO, n, args.duration, args.spawn, f"load-{n:03d}", args.reuse)
        machine[str(n)] = {"loadavg_1m": os.getloadavg()[0]}
    fit_dirs = [out / f"load-{n:03d}" for n in levels if n in fit]
    latency_dirs = list(fit_dirs)
    if not args.no_duo:
        duo_n = levels[1]
        duo = load_level(
            out, duo_scenario(out), duo_n, args.duration, args.spawn, f"load-duo-{duo_n:03d}",
            args.reuse,
        )  # fmt: skip
        fit_dirs.append(duo)

    cal = calibrate(fit_dirs, latency_from=latency_dirs)
    cal_path = cal.write(out / "calibration.yaml")
    print(f"calibration from {', '.join(d.name for d in fit_dirs)}:")
    for name, value in cal.server.items():
        print(f"  server.{name} = {value:.4g}")
    print(f"  cpu fit: rms {cal.cpu.rms:.4f} cores, R² {cal.cpu.r2:.3f}, {cal.cpu.samples} s")
    if cal.latency is not None:
        lat = cal.latency
        print(f"  latency fit: rms {lat.rms * 1000:.2f} ms, R² {lat.r2:.3f}, {lat.samples} points")

    for n in levels:
        simulate_level(out, cal_path, n, args.duration, args.spawn, args.seed)
    table = compare(out, levels, fit)
    print()
    print_table(table)
    worst = float(table["rel_error"].max())
    by_metric = table.groupby("metric")["rel_error"].max()
    over = table[table["rel_error"] > TARGET]
    behind = sorted(set(table.loc[table["swarm_behind"] != "", "listeners"]))
    summary = {
        "levels": levels,
        "fit_levels": sorted(fit),
        "duration": args.duration,
        "spawn": args.spawn,
        "max_error": worst,
        "swarm_behind": [int(n) for n in behind],
        "max_error_by_metric": {str(k): float(v) for k, v in by_metric.items()},
        "over_target": [
            {"listeners": int(r.listeners), "metric": str(r.metric), "rel_error": r.rel_error}
            for r in over.itertuples(index=False)
        ],
        "machine": machine,
        "wall_seconds": time.monotonic() - wall0,
    }
    (out / "fidelity.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    for metric, e in by_metric.items():
        print(f"worst {METRICS[str(metric)][0]}: {e:.1%}")
    if len(over):
        print(
            f"{len(over)} of {len(table)} errors exceed {TARGET:.0%} (marked *): see the docstring"
        )
    if behind:
        for n in behind:
            why = table.loc[table["listeners"] == n, "swarm_behind"].iloc[0]
            print(f"{n} listeners: the swarm fell behind the server ({why})")
        ok = table[table["swarm_behind"] == ""]["rel_error"].max()
        print(
            f"those levels measure the load generator, not the server; max error elsewhere {ok:.1%}"
        )
    print(f"FIGURE fidelity_max_error={worst * 100:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
