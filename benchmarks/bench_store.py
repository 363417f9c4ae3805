"""The durable store on SQLite and on PostgreSQL: acknowledged writes and joins per CPU-second.

One process drives a store the way the server does (synchronously, one call after
another): ``--writes`` acknowledged writes (a report filed, then a block: each durable on
return) and ``--writes`` join + leave pairs (the hot path, not synced on every commit).
SQLite is a file in a temporary directory (WAL, ``synchronous=FULL`` for the writes);
PostgreSQL is a throwaway cluster (`spacesim.server.pg_local`, fsync on) on 127.0.0.1.

CPU, not wall time (the machine is shared): SQLite's is this process's; PostgreSQL's is
this process's (the node's share, what its event loop would pay) plus every process of the
cluster (its backend, WAL writer, checkpointer: ``/proc/PID/stat`` of each).

Figures (each the median of ``--runs`` runs; SQLite is the baseline, measured in the same
run), in units of one report + one block (``acked_writes``) and of one join + its leave
(``joins``): ``sqlite_acked_writes_per_cpu_s``, ``postgres_acked_writes_per_cpu_s`` (node +
cluster), ``postgres_node_acked_writes_per_cpu_s`` (node only), their ratio
``postgres_vs_sqlite_acked_writes``, and the same four for joins.

Measured on the shared 2-core machine (load ~6), 2026-12-07, ``--runs 3 --writes 2000``:
sqlite_acked_writes_per_cpu_s=2641, postgres_acked_writes_per_cpu_s=777,
postgres_node_acked_writes_per_cpu_s=1702, postgres_vs_sqlite_acked_writes=0.26;
sqlite_joins_per_cpu_s=13133, postgres_joins_per_cpu_s=1067,
postgres_node_joins_per_cpu_s=2054, postgres_vs_sqlite_joins=0.09. The node pays about
0.6 ms of CPU per report + block and 0.5 ms per join + leave (psycopg, ~40 us a statement,
4 statements a write), PostgreSQL as much again; SQLite's synced commits cost it less.

Run: ``python benchmarks/bench_store.py [--runs 3] [--writes 2000]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spacesim.server.captions import process_cpu
from spacesim.server.pg_local import LocalPostgres
from spacesim.server.store import open_store


def cluster_cpu(pg: LocalPostgres) -> float:
    """CPU seconds of every process of the cluster (postmaster, backends, WAL writer...)."""
    return sum(process_cpu(pid) or 0.0 for pid in pg.pids())


def measure(store: Any, n: int, tag: str, other_cpu: Callable[[], float]) -> dict[str, float]:
    """Acked writes and joins per CPU-second: (this process + `other_cpu`) and this one."""
    store.add_user("host", "Host")
    for i in range(n):
        store.add_user(f"{tag}u{i}", "U")
    store.create_space(tag, "host", "Bench", status="live")
    out: dict[str, float] = {}
    for kind in ("acked_writes", "joins"):
        own0, other0 = time.process_time(), other_cpu()
        for i in range(n):
            if kind == "acked_writes":
                store.file_report(tag, f"{tag}u{i}", "host", "spam")
                store.block("host", f"{tag}u{i}")
            else:
                store.record_join(tag, f"{tag}u{i}")
                store.record_leave(tag, f"{tag}u{i}")
        own, other = time.process_time() - own0, other_cpu() - other0
        out[kind] = n / (own + other)
        out[f"node_{kind}"] = n / own
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each store (median)")
    ap.add_argument("--writes", type=int, default=2000, help="writes (and joins) per run")
    args = ap.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgres": []}
    with tempfile.TemporaryDirectory() as tmp, LocalPostgres() as pg:
        for run in range(args.runs):
            store = open_store(Path(tmp) / f"run{run}.db")
            try:
                results["sqlite"].append(measure(store, args.writes, f"s{run}", lambda: 0.0))
            finally:
                store.close()
            store = open_store(pg.create_database(f"run{run}"))
            try:
                got = measure(store, args.writes, f"p{run}", lambda: cluster_cpu(pg))
                results["postgres"].append(got)
            finally:
                store.close()
    print(f"{args.runs} runs of {args.writes} acknowledged writes (report + block) and joins")

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    for key in ("acked_writes", "joins"):
        sqlite, postgres = median("sqlite", key), median("postgres", key)
        print(f"FIGURE sqlite_{key}_per_cpu_s={sqlite:.0f} per_cpu_s")
        print(f"FIGURE postgres_{key}_per_cpu_s={postgres:.0f} per_cpu_s")
        node = median("postgres", f"node_{key}")
        print(f"FIGURE postgres_node_{key}_per_cpu_s={node:.0f} per_cpu_s")
        pairs = zip(results["postgres"], results["sqlite"], strict=True)
        ratios = [p[key] / s[key] for p, s in pairs]
        print(f"FIGURE postgres_vs_sqlite_{key}={statistics.median(ratios):.2f} ratio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
