"""Sim-vs-real fidelity up to saturation: the swarm and the calibrated simulator, level by level.

What runs (all on 127.0.0.1; every load run bounded in users and time):

0. **Pinning.** With two or more CPUs, the embedded server is pinned to CPU 0 and the
   swarm's listeners (Locust) to CPU 1 (``spacesim load --server-cpus 0 --swarm-cpus 1``:
   ``os.sched_setaffinity``), so the server's utilisation is of one core it has to
   itself and the swarm's work does not slow its fan-out. The senders (the host and
   its stage) run in a Locust process of their own (``--stage-cpus 1``): the
   listeners' event loop may lag under load, and a sender on it would send its missed
   20 ms slots in bursts that queue at the server, which periodic senders (and the
   model) do not have. A process of its own, asleep between packets, is woken on time
   by the kernel's scheduler even beside a busy one (a waking task preempts a running
   one that has had more CPU), where a timer on a busy event loop waits for the loop.
   It shares the swarm's core, not the server's: the stage's process costs ~0.1 core
   (its members' own receive path, Locust), which the server's core could not spare
   near saturation. ``--no-pin`` turns it off.
1. **Levels to saturation.** Unless ``--levels`` is given, two probe runs (``PROBE``
   listeners, ``PROBE_SPEAKERS`` = 1 and ``SLOTS`` speakers) measure the server's and the
   swarm's CPU per listener at two speaker counts, which separates a listener's cost
   per connection from its cost per speaker heard (`choose_sizing`); from them follow
   the number of speakers K and the listener count that would fill the server's core
   with them (``N_sat``): the fewest speakers for which the past-saturation level fits
   the swarm's ``MAX_LISTENERS`` and the swarm stays within ``SWARM_SHARE`` of its core
   (``--speakers`` forces K); at most ``SLOTS``, the streams the server forwards to a
   listener at once (more speakers would add senders but no work per listener). The
   levels are the ``--fractions`` of ``N_sat`` (default 0.2 … 0.97, seven levels).
   Each level is ``spacesim load scenarios/fidelity.yaml -u N+1 -r SPAWN
   -t N/SPAWN+DURATION --shape steady --network none``
   (``OUT/load-NNN``); with one speaker, one more run with two speakers at the 2nd
   level (``OUT/load-duo-NNN``) separates CPU per packet from CPU per connection for
   the fit.
2. **Past saturation** (``--overload``, default 1.25 x N_sat, at most
   ``MAX_LISTENERS``): the scenario's ``server.max_streams`` is set to N_sat's
   streams, which the embedded server enforces (``spacesim serve --capacity``) and the
   model too; joins beyond it must be refused and the admitted audience must be served
   as well as at N_sat (``OUT/load-over-NNN``, ``OUT/sim-over-NNN``). Reported on its
   own lines.
3. ``spacesim calibrate`` on the **fit levels** (the 1st, 3rd, 5th, ... and the duo
   run) -> ``OUT/calibration.yaml``; the other levels are **out of sample** and the
   table says which is which (``in_fit``).
4. ``spacesim simulate`` of the same scenario at each level with the calibration
   (constant arrivals at the spawn rate, ``rooms.listener_cap`` = N, every listener
   sampled) -> ``OUT/sim-NNN``; plus a finer grid of simulated levels for the curve
   (``OUT/curve.csv``).
5. Per level, both runs' steady windows are summarised the same way
   (`spacesim.analysis.fidelity`): p50 / p95 / p99 publisher -> listener latency,
   delivery ratio, join time p95 (all listeners' joins) and mean server CPU;
   relative errors -> ``OUT/errors.csv``, ``OUT/fidelity.json``. A level where the
   swarm itself was the bottleneck (`spacesim.sim.calibrate.swarm_behind`: it took in
   fewer packets than were sent, or worked off a backlog) is flagged and not counted.
   Join times are the swarm's own clients', whose steps wait for the listeners' event
   loop: the table's ``jlag95`` is that loop's p95 lag while the audience joined
   (`swarm_while_joining`), and the bench says where a join-time error comes with a
   lagging loop (more than ``JOIN_LAG``); such errors still count.

Figures (last lines):

* ``fidelity_max_error`` — worst relative error over all metrics and counted levels
  whose measured server load is at most 0.9 of its core;
* ``fidelity_max_load`` — highest measured server-core utilisation (mean CPU in a
  level's steady window over the cores it was pinned to);
* ``fidelity_knee_error`` — the knee is the load at which p95 latency first crosses 2x
  its value at the lowest level (linear interpolation between levels); the error is
  |predicted - measured| / measured, the prediction being the simulated curve's knee.

Run: ``python benchmarks/bench_fidelity.py [--levels 100,200,...] [--duration 25]
[--spawn 25] [--out runs/fidelity] [--reuse] [--quick] [--no-pin]``.

The multi-node case, ``python benchmarks/bench_fidelity.py --cluster [--levels ...]
[--quick]`` (root: network namespaces), is benchmarks/fidelity_cluster.py: a two-node
cluster on a veth pair against the simulator with two nodes, the same placement and a
calibrated ``edge_delay``; it ends with ``FIGURE cluster_fidelity_max_error``.

What the model can and cannot capture: on loopback, latency is the server's
sequential fan-out plus the kernel's delivery to the listener's socket (listeners take
kernel receive times, ``SO_TIMESTAMPNS``). Measured results, with history, are in
docs/fidelity.md.
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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from spacesim.analysis.fidelity import (
    METRICS,
    Level,
    knee,
    level_metrics,
    open_level,
    relative_errors,
)
from spacesim.results import Run, load_run, write_run
from spacesim.scenario import load_scenario
from spacesim.server.app import ServerConfig
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
FRACTIONS = (0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97)
OVERLOAD = 1.25
PROBE = 150  # listeners of each probe run that sizes the levels
# Speakers a listener hears at once: the server forwards at most this many streams to each
# client (`spacesim serve`'s ServerConfig.slots), so more speakers add no work per listener.
SLOTS = {f.name: f.default for f in fields(ServerConfig)}["slots"]
PROBE_SPEAKERS = (1, SLOTS)  # speakers of the probe runs: two, to separate connection and packets
MIN_OVERLOAD = 1.1  # the past-saturation level offers at least this x N_sat
SWARM_SHARE = 0.8  # the swarm's processes may use this much of their core at N_sat
MAX_LISTENERS = 880  # spacesim load's user limit (one UDP socket each) less the host
IDLE_CPU = 0.02  # the server's CPU with nobody connected (cores), if a probe has no sample
DURATION = 20.0  # steady seconds per level (after the ramp)
SPAWN = 25.0
TARGET = 0.10  # the target: every relative error within 10 %
JOIN_LAG = 0.020  # the swarm's loop lag while joining past which the table says so (s)
MAX_LOAD = 0.90  # fidelity_max_error counts levels up to this measured load
CURVE_POINTS = 16  # simulated levels on the latency-vs-load curve
GRACE = 120.0  # seconds past a load run's duration before it is killed


def _say(msg: str) -> None:
    print(f"bench_fidelity: {msg}", file=sys.stderr, flush=True)


def scenario_with(out: Path, speakers: int, name: str, max_streams: int | None = None) -> Path:
    """The fidelity scenario with `speakers` talking (and admission control), as a file."""
    sc = load_scenario(SCENARIO, [f"name={name}", f"rooms.speakers={speakers - 1}"])
    sc = sc.model_copy(
        update={
            "speaking": sc.speaking.model_copy(update={"active_speakers": speakers}),
            "server": sc.server.model_copy(update={"max_streams": max_streams}),
        }
    )
    path = out / f"{name}.yaml"
    path.write_text(sc.to_yaml(), encoding="utf-8")
    load_scenario(path)  # the file must stand on its own
    return path


def load_level(
    out: Path,
    scenario: Path,
    n: int,
    duration: float,
    spawn: float,
    name: str,
    reuse: bool,
    pin: tuple[str, str] | None,
) -> Path:
    """One `spacesim load` run with n listeners (and the host); its output -> NAME.log.

    It lasts `run_time`: the audience's ramp at the spawn rate, then `duration` steady.
    """
    duration = run_time(n, duration, spawn)
    d = out / name
    if reuse and (d / "meta.json").is_file():
        _say(f"{name}: reusing {d}")
        return d
    cmd = [
        sys.executable, "-m", "spacesim.cli", "load", str(scenario),
        "-u", str(n + 1), "-r", f"{spawn:g}", "-t", f"{duration:g}s", "--out", str(d),
        "--shape", "steady",  # N listeners throughout, started at the spawn rate
        "--network", "none",  # plain loopback: the scenario's network is zero anyway
    ]  # fmt: skip
    if pin is not None:
        # the senders (host, stage) in their own process: they send every 20 ms however
        # busy the listeners' process is (`spacesim.load.run._stage_split`)
        cmd += ["--server-cpus", pin[0], "--swarm-cpus", pin[1], "--stage-cpus", pin[1]]
    _say(f"{name}: {n} listeners for {duration:g} s")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    if d.exists():
        for stale in ("meta.json",):
            (d / stale).unlink(missing_ok=True)
    with open(out / f"{name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=duration + GRACE
        )
    if proc.returncode != 0 or not (d / "meta.json").is_file():
        raise RuntimeError(f"{name}: spacesim load exited {proc.returncode}; see {name}.log")
    return d


def simulate_level(
    out: Path, scenario: Path, calibration: Path, n: int, duration: float, spawn: float,
    seed: int, name: str,
) -> Path:  # fmt: skip
    """The same level in the simulator, with the calibrated server."""
    duration = run_time(n, duration, spawn)
    overrides = [
        f"duration={duration}",
        f"arrivals.rate={spawn}",
        f"rooms.listener_cap={n}",
        f"sim.latency_sample={n}",
    ]
    sc = apply_calibration(load_scenario(scenario, overrides), calibration)
    run = simulate(sc, seed=seed)
    d = out / name
    if (d / "meta.json").is_file():
        (d / "meta.json").unlink()  # a rerun replaces the simulated level
    write_run(d, run.records, run.meta)
    return d


def run_time(n: int, steady: float, spawn: float) -> float:
    """Seconds a level runs: n listeners join at the spawn rate, then `steady` seconds."""
    return math.ceil(n / spawn + steady)


def server_cores(run_dir: Path) -> float:
    """Cores the server had: those it was pinned to, else the machine's."""
    meta = json.loads((run_dir / "meta.json").read_text())
    pinned = (meta.get("extra") or {}).get("server_cpus")
    return float(len(pinned)) if pinned else float(os.cpu_count() or 1)


@dataclass(frozen=True)
class Probe:
    """What a probe run measured: mean cores in its steady window."""

    speakers: int
    listeners: int
    server_cpu: float  # the server's
    idle_cpu: float  # the server's before anyone joined
    swarm_cpu: float  # the swarm's listeners' process(es); NaN: unknown
    stage_cpu: float = 0.0  # the senders' own process (``--stage-cpus``), on the swarm's core


@dataclass(frozen=True)
class Sizing:
    """The speakers and the core-filling audience (`n_sat`) chosen from the probes."""

    speakers: int
    n_sat: float
    idle: float  # cores
    per_connection: float  # server cores per listener
    per_speaker: float  # server cores per listener and speaker (its packets)
    swarm_per_connection: float  # swarm cores per listener (NaN: not measured)
    swarm_per_speaker: float  # swarm cores per listener and speaker
    stage: float  # cores of the senders' process with K speakers
    swarm_at_sat: float  # the swarm's cores at n_sat (NaN: not measured)
    note: str = ""


def _per_listener_law(ks: Sequence[int], per: Sequence[float]) -> tuple[float, float]:
    """(a, b) of ``per-listener cost = a + b K`` from probes with different K (least
    squares; both kept positive: a listener's connection and its packets both cost)."""
    x = np.column_stack([np.ones(len(ks)), np.asarray(ks, dtype="float64")])
    (a, b), *_ = np.linalg.lstsq(x, np.asarray(per, dtype="float64"), rcond=None)
    return max(float(a), 1e-9), max(float(b), 1e-9)


def choose_sizing(
    probes: Sequence[Probe],
    cores: float,
    max_listeners: int = 880,
    min_overload: float = 1.1,
    swarm_share: float = 0.8,
    max_speakers: int = 3,
) -> Sizing:
    """Speakers K and the audience that fills the server's core with them, from probes.

    Each probe gives the server's cores per listener at its K, so two probes with
    different K separate what a listener costs per connection (``a``: its transport's
    timers, RTCP, consent checks) from what it costs per speaker heard (``b``: the
    packets fanned out to it): ``N_sat(K) = (cores - idle) / (a + b K)``. A per-packet
    law alone (``N_sat / K``) is wrong when ``a`` is not small: with the fan-out in
    machine code ``a`` was ~3x ``b``, and levels sized that way stopped at 0.63 of the
    core. The swarm's processes are measured the same way (``a'``, ``b'``). K is the
    fewest speakers for which the past-saturation level can offer ``min_overload x
    N_sat`` listeners within the swarm's ``max_listeners`` (so admission really
    refuses joins there) and the swarm at ``N_sat`` uses at most ``swarm_share`` of its
    core (room for its event loop). Fewer speakers: more listeners, more joins, a
    longer ramp, and the swarm's per-packet work kept low. When no K meets both, the
    fewest that meets the listener limit (the figure then says the swarm fell behind).
    """
    if len({p.speakers for p in probes}) < 2:
        raise ValueError("sizing needs probes with at least two speaker counts")
    idle = float(np.median([p.idle_cpu for p in probes]))
    a, b = _per_listener_law(
        [p.speakers for p in probes],
        [max(p.server_cpu - idle, 1e-9) / p.listeners for p in probes],
    )
    swarm = [p for p in probes if math.isfinite(p.swarm_cpu)]
    sa = sb = math.nan
    stage = [0.0, 0.0]
    if len({p.speakers for p in swarm}) >= 2:
        # the listeners' process: no fixed term (an idle Locust process takes ~0.01
        # core), so a slight overestimate; the senders' process: linear in K
        ks = [p.speakers for p in swarm]
        sa, sb = _per_listener_law(ks, [p.swarm_cpu / p.listeners for p in swarm])
        x = np.column_stack([np.ones(len(ks)), np.asarray(ks, dtype="float64")])
        fit, *_ = np.linalg.lstsq(x, np.array([p.stage_cpu for p in swarm]), rcond=None)
        stage = [float(fit[0]), float(fit[1])]
    fallback: Sizing | None = None
    for k in range(1, max_speakers + 1):
        n_sat = (cores - idle) / (a + b * k)
        on_stage = max(stage[0] + stage[1] * k, 0.0)
        at_sat = n_sat * (sa + sb * k) + on_stage if math.isfinite(sa) else math.nan
        sizing = Sizing(k, n_sat, idle, a, b, sa, sb, on_stage, at_sat)
        if min_overload * n_sat > max_listeners:
            continue
        if not at_sat > swarm_share:  # NaN (not measured) passes
            return sizing
        if fallback is None:
            fallback = replace(
                sizing,
                note=f"no speaker count keeps the swarm within {swarm_share:.0%} of its core",
            )
    if fallback is not None:
        return fallback
    n_sat = (cores - idle) / (a + b * max_speakers)
    note = f"even {max_speakers} speakers leave N_sat past the swarm's {max_listeners}"
    return Sizing(max_speakers, n_sat, idle, a, b, sa, sb, math.nan, math.nan, note)


def _idle_cpu(d: Path) -> float:
    """The server's mean CPU before the run's first join (cores); NaN if no sample."""
    run = open_level(d).run
    server = load_run(d / str(run.meta.extra.get("server_run") or "server"))
    offset = float(run.meta.extra["t0_unix"]) - float(server.meta.extra["t0_unix"])
    rec = run.records
    joins = rec.loc[rec["kind"] == "participant_joined", "t"]
    if not len(joins):
        return math.nan
    srec = server.records
    first = float(joins.min()) + offset  # on the server's clock
    cpu = srec.loc[(srec["kind"] == "node_cpu") & (srec["t"] < first - 1.0), "value"]
    return float(cpu.mean()) if len(cpu) else math.nan


def _swarm_cpu(level: Level) -> tuple[float, float]:
    """(listeners', senders') processes' CPU in the steady window (cores, summed over
    processes), from their ``loop_lag`` records' ``cpu`` and ``role``; NaN if unknown."""
    lag = level.records[level.records["kind"] == "loop_lag"]
    attrs = [json.loads(a) if isinstance(a, str) else {} for a in lag["attrs"]]
    frame = pd.DataFrame(
        {
            "who": lag["participant"].to_numpy(),
            "cpu": [a.get("cpu", math.nan) for a in attrs],
            "stage": [a.get("role") == "stage" for a in attrs],
        }
    )
    if not len(frame) or frame["cpu"].isna().any():
        return math.nan, math.nan
    per = frame.groupby(["who", "stage"])["cpu"].mean().reset_index()
    stage = per["stage"].astype(bool)
    return float(per.loc[~stage, "cpu"].sum()), float(per.loc[stage, "cpu"].sum())


def probe(d: Path, speakers: int) -> Probe:
    """A probe run's measures (see `Probe`)."""
    level = open_level(d)
    idle = _idle_cpu(d)
    listeners, stage = _swarm_cpu(level)
    return Probe(
        speakers,
        PROBE,
        float(level.cpu.mean()),
        IDLE_CPU if math.isnan(idle) else idle,
        listeners,
        0.0 if math.isnan(stage) else stage,
    )


def size_levels(
    out: Path, args: argparse.Namespace, pin: tuple[str, str] | None
) -> tuple[list[int], Sizing]:
    """(levels, sizing) from probe runs at ``PROBE_SPEAKERS``: see `choose_sizing`."""
    probes = []
    for k in PROBE_SPEAKERS:
        sc = SCENARIO if k == 1 else scenario_with(out, k, f"fidelity-{k}")
        d = load_level(out, sc, PROBE, args.duration, args.spawn, f"probe-{k}", args.reuse, pin)
        probes.append(probe(d, k))
        p = probes[-1]
        _say(
            f"probe: {p.server_cpu:.3f} server cores (idle {p.idle_cpu:.3f}), "
            f"swarm {p.swarm_cpu:.3f} (listeners) + {p.stage_cpu:.3f} (senders) cores at "
            f"{PROBE} listeners of {k} speaker(s)"
        )
    cores = server_cores(out / f"probe-{PROBE_SPEAKERS[0]}")
    sizing = choose_sizing(probes, cores, MAX_LISTENERS, MIN_OVERLOAD, SWARM_SHARE, SLOTS)
    if args.speakers:  # given: its own N_sat, by the same law
        k = args.speakers
        n_sat = (cores - sizing.idle) / (sizing.per_connection + sizing.per_speaker * k)
        at_sat = n_sat * (sizing.swarm_per_connection + sizing.swarm_per_speaker * k)
        at_sat += sizing.stage  # the senders' process as sized (close enough for a report)
        sizing = replace(sizing, speakers=k, n_sat=n_sat, swarm_at_sat=at_sat, note="given")
    n_sat = sizing.n_sat
    levels = sorted({max(2, min(MAX_LISTENERS, round(f * n_sat))) for f in args.fractions})
    _say(
        f"sizing: a listener costs the server {sizing.per_connection * 1e3:.3f} ms/s + "
        f"{sizing.per_speaker * 1e3:.3f} ms/s per speaker, the swarm "
        f"{sizing.swarm_per_connection * 1e3:.3f} + {sizing.swarm_per_speaker * 1e3:.3f} "
        f"-> {sizing.speakers} speaker(s), the core fills at ~{n_sat:.0f} listeners "
        f"(swarm ~{sizing.swarm_at_sat:.2f} cores){'; ' + sizing.note if sizing.note else ''}; "
        f"levels {levels}"
    )
    return levels, sizing


def compare(out: Path, names: Sequence[tuple[int, str, str]], fitted: set[int]) -> pd.DataFrame:
    """Errors per level and metric -> OUT/errors.csv. `names`: (listeners, load, sim)."""
    frames = []
    for n, load_name, sim_name in names:
        measured = open_level(out / load_name)
        real = level_metrics(measured)
        sim = level_metrics(open_level(out / sim_name))
        e = relative_errors(real, sim)
        e.insert(0, "listeners", n)
        e.insert(1, "level", load_name)
        e["load"] = real["server_cpu.mean"] / server_cores(out / load_name)
        e["sim_load"] = sim["server_cpu.mean"] / server_cores(out / load_name)
        e["in_fit"] = n in fitted
        e["swarm_pace"] = swarm_pace(measured.run)
        e["swarm_loop_lag"] = swarm_loop_lag(measured.run)
        e["join_lag"], e["join_swarm_cpu"] = swarm_while_joining(measured.run)
        e["swarm_behind"] = swarm_behind(measured.run) or ""
        e["admitted"] = _admitted(measured)
        e["sim_admitted"] = _admitted(open_level(out / sim_name))
        frames.append(e)
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out / "errors.csv", index=False)
    return table


def swarm_while_joining(run: Run) -> tuple[float, float]:
    """(p95 loop lag, mean CPU in cores) of the swarm's listeners' process while its
    audience joined (first to last listener join); NaN where the records lack them.

    A listener's join time is measured by the swarm's own client: its signalling, ICE
    and DTLS steps each wait for the listeners' event loop, which also runs the audience
    already there. So the join times of a level whose loop lagged while joining include
    the rig, which the model (clients on their own devices) does not have: the table
    shows it next to the join-time error (docs/fidelity.md).
    """
    rec = run.records
    joins = rec.loc[(rec["kind"] == "participant_joined") & (rec["role"] == "listener"), "t"]
    lag = rec[rec["kind"] == "loop_lag"]
    if not len(joins) or not len(lag):
        return math.nan, math.nan
    lag = lag[(lag["t"] >= joins.min()) & (lag["t"] <= joins.max() + 1.0)]
    attrs = [json.loads(a) if isinstance(a, str) else {} for a in lag["attrs"]]
    audience = np.array([a.get("role", "all") != "stage" for a in attrs], dtype=bool)
    if not audience.any():
        return math.nan, math.nan
    cpu = np.array([a.get("cpu", math.nan) for a in attrs], dtype="float64")[audience]
    p95 = float(np.quantile(lag["value"].to_numpy("float64")[audience], 0.95))
    return p95, float(np.nanmean(cpu)) if np.isfinite(cpu).any() else math.nan


def _admitted(level: Level) -> int:
    rec = level.run.records
    joined = rec[(rec["kind"] == "participant_joined") & (rec["role"] == "listener")]
    return int(joined["participant"].nunique())


def curve(
    out: Path, scenario: Path, calibration: Path, levels: Sequence[int], args: argparse.Namespace
) -> pd.DataFrame:
    """The simulated latency-vs-load curve on a fine grid -> OUT/curve.csv."""
    lo, hi = min(levels), max(levels)
    points = 4 if args.quick else CURVE_POINTS
    grid = sorted({round(x) for x in np.linspace(lo, hi * 1.08, points)} | set(levels))
    rows = []
    for n in grid:
        d = simulate_level(
            out, scenario, calibration, n, args.duration, args.spawn, args.seed, "curve-sim"
        )
        m = level_metrics(open_level(d))
        rows.append({"listeners": n, **m})
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "curve.csv", index=False)
    return frame


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
        f"{'N':>4} {'fit':>3} {'load':>5} {'pace':>5} {'lag95':>6} {'jlag95':>6}  {'metric':<15} "
        f"{'measured':>11} {'simulated':>11} {'error':>8}"
    )
    for row in table.itertuples(index=False):
        label, unit = METRICS[str(row.metric)]
        flag = "*" if row.rel_error > TARGET else " "
        print(
            f"{row.listeners:>4} {'yes' if row.in_fit else 'no':>3} {row.load:>5.2f} "
            f"{row.swarm_pace:>5.2f} {row.swarm_loop_lag * 1000:>4.0f}ms "
            f"{row.join_lag * 1000:>4.0f}ms  {label:<15} "
            f"{_show(row.measured, unit):>11} {_show(row.simulated, unit):>11} "
            f"{row.rel_error:>7.1%}{flag}"
        )


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if "--cluster" in args_in:  # the multi-node case: its own options (fidelity_cluster.py)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import fidelity_cluster

        return fidelity_cluster.main(args_in)
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--levels", help="listeners per level (default: sized by a probe run)")
    ap.add_argument(
        "--fractions", type=_floats, default=FRACTIONS, help="levels as fractions of N_sat"
    )
    ap.add_argument(
        "--overload", type=float, default=OVERLOAD, help="past-saturation level (x N_sat; 0: none)"
    )
    ap.add_argument("--speakers", type=int, help="active speakers (default: sized by the probe)")
    ap.add_argument(
        "--duration",
        type=float,
        default=DURATION,
        help="steady seconds per level, after its audience joined at the spawn rate",
    )
    ap.add_argument("--spawn", type=float, default=SPAWN, help="listeners started per second")
    ap.add_argument("--out", default="runs/fidelity", help="directory for runs and tables")
    ap.add_argument("--fit", help="levels to calibrate from (default: 1st, 3rd, 5th, ... + duo)")
    ap.add_argument("--no-duo", action="store_true", help="skip the two-speaker run")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and swarm to CPUs")
    ap.add_argument("--reuse", action="store_true", help="reuse load runs already in --out")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument(
        "--quick", action="store_true", help="2 tiny levels, 6 s each (for the notebook's CI run)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.levels, args.duration, args.spawn, args.no_duo = "3,6", 6.0, 20.0, True
        args.overload = 0.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall0 = time.monotonic()
    pin = None if args.no_pin or (os.cpu_count() or 1) < 2 else ("0", "1")

    speakers = args.speakers or 1
    n_sat = math.nan
    sizing = None
    if args.levels:
        levels = sorted({int(x) for x in args.levels.split(",")})
    else:
        levels, sizing = size_levels(out, args, pin)
        speakers, n_sat = sizing.speakers, sizing.n_sat
    scenario = SCENARIO if speakers == 1 else scenario_with(out, speakers, f"fidelity-{speakers}")
    fit = (
        {int(x) for x in args.fit.split(",")}
        if args.fit
        else set(levels[::2])
        if len(levels) > 2
        else set(levels)
    )

    machine: dict[str, object] = {}
    for n in levels:
        load_level(out, scenario, n, args.duration, args.spawn, f"load-{n:03d}", args.reuse, pin)
        machine[str(n)] = {"loadavg_1m": os.getloadavg()[0]}
    fit_dirs = [out / f"load-{n:03d}" for n in levels if n in fit]
    latency_dirs = list(fit_dirs)
    if not args.no_duo and speakers == 1 and len(levels) > 1:
        duo_n = levels[1]
        duo = load_level(
            out, scenario_with(out, 2, "fidelity-duo"), duo_n, args.duration, args.spawn,
            f"load-duo-{duo_n:03d}", args.reuse, pin,
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

    names = []
    for n in levels:
        simulate_level(
            out, scenario, cal_path, n, args.duration, args.spawn, args.seed, f"sim-{n:03d}"
        )
        names.append((n, f"load-{n:03d}", f"sim-{n:03d}"))
    over_n = None
    if args.overload > 0 and not math.isnan(n_sat):
        cap_n = min(MAX_LISTENERS, round(n_sat))
        over_n = min(MAX_LISTENERS, round(args.overload * n_sat))
        over_sc = scenario_with(out, speakers, "fidelity-over", max_streams=cap_n * speakers)
        load_level(
            out, over_sc, over_n, args.duration, args.spawn, f"load-over-{over_n:03d}",
            args.reuse, pin,
        )  # fmt: skip
        simulate_level(
            out, over_sc, cal_path, over_n, args.duration, args.spawn, args.seed,
            f"sim-over-{over_n:03d}",
        )  # fmt: skip
        names.append((over_n, f"load-over-{over_n:03d}", f"sim-over-{over_n:03d}"))
    table = compare(out, names, fit)
    grid = curve(out, scenario, cal_path, levels, args)
    print()
    print_table(table)

    under = table[~table["level"].str.startswith("load-over")]
    counted = under[(under["swarm_behind"] == "") & (under["load"] <= MAX_LOAD)]
    worst = float(counted["rel_error"].max()) if len(counted) else math.nan
    out_of_sample = counted[~counted["in_fit"]]
    worst_oos = float(out_of_sample["rel_error"].max()) if len(out_of_sample) else math.nan
    max_load = float(table["load"].max())
    p95 = under[under["metric"] == "audio_latency.p95"].sort_values("load")
    measured_knee = knee(p95["load"].to_numpy(), p95["measured"].to_numpy())
    cores = server_cores(out / f"load-{levels[0]:03d}")
    sim_loads = grid["server_cpu.mean"].to_numpy() / cores
    # The predicted curve's "low load" is the simulated value at the lowest measured level.
    base = float(p95["simulated"].iloc[0]) if len(p95) else math.nan
    predicted_knee = knee(sim_loads, grid["audio_latency.p95"].to_numpy(), base=base)
    knee_error = abs(predicted_knee - measured_knee) / measured_knee

    by_metric = counted.groupby("metric")["rel_error"].max()
    behind = sorted(set(under.loc[under["swarm_behind"] != "", "listeners"]))
    summary = {
        "levels": levels,
        "speakers": speakers,
        "scenario": str(scenario),
        "n_sat": n_sat,
        "sizing": asdict(sizing) if sizing is not None else None,
        "fit_levels": sorted(fit),
        "pinned": {"server": pin[0], "swarm": pin[1]} if pin else None,
        "duration": args.duration,
        "spawn": args.spawn,
        "max_error": worst,
        "max_error_out_of_sample": worst_oos,
        "max_load": max_load,
        "knee": {"measured": measured_knee, "predicted": predicted_knee, "error": knee_error},
        "overload": over_n,
        "swarm_behind": [int(n) for n in behind],
        "max_error_by_metric": {str(k): float(v) for k, v in by_metric.items()},
        "over_target": [
            {"listeners": int(r.listeners), "metric": str(r.metric), "rel_error": r.rel_error}
            for r in counted[counted["rel_error"] > TARGET].itertuples(index=False)
        ],
        "machine": machine,
        "wall_seconds": time.monotonic() - wall0,
    }
    (out / "fidelity.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    for metric, e in by_metric.items():
        print(f"worst {METRICS[str(metric)][0]}: {e:.1%}")
    print(f"worst out of sample (levels not fitted): {worst_oos:.1%}")
    for n in behind:
        why = under.loc[under["listeners"] == n, "swarm_behind"].iloc[0]
        print(f"{n} listeners: the swarm fell behind the server ({why}); not counted")
    joins = table[(table["metric"] == "join_time.p95") & (table["rel_error"] > TARGET)]
    for row in joins.itertuples(index=False):
        if row.join_lag > JOIN_LAG:
            print(
                f"{row.listeners} listeners: join time {row.measured * 1000:.0f} ms measured "
                f"against {row.simulated * 1000:.0f} ms while the swarm's listeners' loop "
                f"lagged {row.join_lag * 1000:.0f} ms (p95) at {row.join_swarm_cpu:.2f} "
                "cores: its clients' join steps waited for it (the rig, not the server)"
            )
    if over_n is not None:
        o = table[table["level"].str.startswith("load-over")].iloc[0]
        print(
            f"past saturation: {over_n} listeners offered, admission at {round(n_sat)}: "
            f"{o.admitted} admitted (simulated {o.sim_admitted}), load {o.load:.2f}"
        )
    print(
        f"knee (p95 = 2x its low-load value): measured at load {measured_knee:.3f}, "
        f"predicted {predicted_knee:.3f}"
    )
    print(f"FIGURE fidelity_max_error={worst * 100:.1f} %")
    print(f"FIGURE fidelity_max_load={max_load:.3f} ratio")
    print(f"FIGURE fidelity_knee_error={knee_error * 100:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
