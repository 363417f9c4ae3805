"""How fast the SimPy model runs an hour of a town hall at 100k and 1M listeners.

Prints simulated seconds per wall second, and the model's SimPy events per second
beside a bare SimPy event loop measured in the same run (the ceiling any SimPy model
on this machine can reach). Run: ``python benchmarks/bench_sim.py [--runs 3]``.

Targets (issue 2): >= 360x real time for 100k listeners on one big node, >= 60x for
1M listeners on 50 nodes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import simpy

from spacesim.scenario import Scenario, Server, parse_scenario
from spacesim.sim import simulate


def town_hall(listeners: int, nodes: int) -> Scenario:
    """An hour-long town hall: a notification burst brings `listeners`, who mostly stay."""
    # A listener costs 3 senders x 50 packets/s x cpu_per_packet + cpu_per_connection
    # (the model's default costs); size the nodes so that they run at ~50 % and the model
    # exercises the unsaturated path.
    costs = Server()
    per_listener = 3 * 50 * costs.cpu_per_packet + costs.cpu_per_connection
    cores = listeners * per_listener / nodes / 0.5
    spec: dict[str, Any] = {
        "name": f"bench-town-hall-{listeners}",
        "duration": "1h",
        "rooms": {"count": 1, "cohosts": 2, "speakers": 4},
        "speaking": {"active_speakers": 3},
        "arrivals": {
            "kind": "flash_crowd",
            "base": f"{listeners / 3600 / 10:.3f}/s",
            "bursts": [{"at": 0, "size": int(listeners * 0.9), "over": "5m"}],
        },
        "session": {"kind": "lognormal", "mean": "3h", "sigma": 0.5},
        # No guest speakers: each would add a sender beyond the three the nodes are sized for.
        "audience": {
            "hand_raise_rate": "0.2/h",
            "approval": 0,
            "reaction_rate": "1/min",
            "report_rate": "0.02/h",
        },
        "network": [
            {"share": 0.8, "rtt": "40ms", "jitter": "5ms", "loss": "0.2%"},
            {"share": 0.2, "rtt": "150ms", "jitter": "20ms", "loss": "1%"},
        ],
        "server": {"nodes": nodes, "cores": round(cores, 1)},
    }
    return parse_scenario(spec, "bench")


def bare_simpy(n_events: int = 1_000_000) -> float:
    """Events per second of an empty SimPy loop: 100 processes doing timeouts."""
    env = simpy.Environment()

    def ticker(env: simpy.Environment, k: int) -> Any:
        for _ in range(k):
            yield env.timeout(1.0)

    for _ in range(100):
        env.process(ticker(env, n_events // 100))
    t0 = time.perf_counter()
    env.run()
    return n_events / (time.perf_counter() - t0)


def measure(sc: Scenario, runs: int) -> tuple[float, float, int]:
    speeds, rates = [], []
    peak = 0
    for seed in range(1, runs + 1):
        t0 = time.perf_counter()
        run = simulate(sc, seed=seed)
        wall = time.perf_counter() - t0
        speeds.append(sc.duration / wall)
        rates.append(run.meta.extra["simpy_events"] / wall)
        conc = run.records[run.records["kind"] == "concurrency"]
        peak = int(conc.groupby("t")["value"].sum().max())
        events = run.meta.extra["simpy_events"]
        print(
            f"  {sc.name} seed {seed}: {wall:6.1f} s wall, {sc.duration / wall:7.0f}x real time, "
            f"{events / wall:9,.0f} events/s, {len(run.records):,} records, "
            f"peak {peak:,} listeners",
            flush=True,
        )
    return statistics.median(speeds), statistics.median(rates), peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per case (median reported)")
    args = ap.parse_args()

    bare = statistics.median(bare_simpy() for _ in range(3))
    print(f"bare SimPy loop: {bare:,.0f} events/s")
    s100k, r100k, peak100k = measure(town_hall(100_000, 1), args.runs)
    s1m, r1m, peak1m = measure(town_hall(1_000_000, 50), max(1, args.runs))
    print()
    print(
        f"100k listeners (peak {peak100k:,}), 1 node:  {s100k:,.0f}x real time, "
        f"{r100k:,.0f} events/s = {r100k / bare:.0%} of bare SimPy"
    )
    print(
        f"1M listeners (peak {peak1m:,}), 50 nodes: {s1m:,.0f}x real time, "
        f"{r1m:,.0f} events/s = {r1m / bare:.0%} of bare SimPy"
    )
    print(f"FIGURE bare_simpy_events={bare:.0f} events/s")
    print(f"FIGURE sim_events_ratio_100k={r100k / bare:.2f} x_bare_simpy")
    print(f"FIGURE sim_speed_100k={s100k:.0f} x_realtime")
    print(f"FIGURE sim_speed_1m={s1m:.0f} x_realtime")
    return 0


if __name__ == "__main__":
    sys.exit(main())
