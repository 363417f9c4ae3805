"""Sweeps: one scenario over a grid of overrides, one row of summary figures per point.

A grid axis is any scenario field path (``server.nodes=1,2,4``, ``network.0.loss=0,1%``,
the same paths as ``--set``) or one of three names:

* ``listeners``: the audience, expected peak concurrent listeners over all rooms
  (`spacesim.sim.audience`); arrivals are scaled to it, keeping the crowd's shape;
* ``nodes``: short for ``server.nodes``;
* ``seed``: the run's random seed, to repeat points.

Each point is simulated by `run_point`, a plain function of a picklable `Point`, so the
same call runs in this process, in a local process pool, or on Dask workers. A point
whose run directory already holds its run (same scenario and seed) is read back instead
of simulated again, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from spacesim.results import check_slos, load_run, metric_table, summarise, write_run
from spacesim.scenario import Scenario, parse_count, parse_scenario
from spacesim.sim.audience import expected_audience, with_audience
from spacesim.sim.engine import simulate

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "ALIASES",
    "FIGURES",
    "GridError",
    "Point",
    "axis_column",
    "grid_points",
    "parse_grid",
    "run_point",
    "sweep",
]

#: Short axis names and the field they set.
ALIASES: Mapping[str, str] = {"nodes": "server.nodes"}
_SPECIAL = ("listeners", "seed")

#: Summary figures each row carries, named as `spacesim.results.metric_table` names them
#: (and as SLO targets refer to them).
FIGURES: tuple[str, ...] = (
    "concurrency.value",
    "joins.value",
    "joins_refused.value",
    "join_time.p95",
    "first_audio.p95",
    "audio_latency.p50",
    "audio_latency.p95",
    "audio_latency.p99",
    "delivery_ratio.value",
    "hand_wait.p95",
    "node_utilisation.p95",
    "node_utilisation.value",
    "packets_dropped.value",
)

Grid = Mapping[str, Sequence[object]]
Progress = Callable[[int, int, dict[str, Any]], None]


class GridError(ValueError):
    """A grid that cannot be run; the message names the axis and the value."""


# --------------------------------------------------------------------------- grid


def parse_grid(specs: Iterable[str]) -> dict[str, list[str]]:
    """``["listeners=1e3,1e4", "nodes=1,2"]`` -> ``{"listeners": [...], "nodes": [...]}``."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        if not sep or not name:
            raise GridError(f"--grid {spec}: expected NAME=V1,V2,... (e.g. nodes=1,2,4)")
        values = [v.strip() for v in text.split(",")]
        if not text.strip() or not all(values):
            raise GridError(f"--grid {spec}: axis {name!r} has an empty value")
        if axis_column(name) in {axis_column(n) for n in grid}:
            raise GridError(f"--grid {spec}: axis {name!r} is given twice")
        grid[name] = values
    return grid


def axis_column(name: str) -> str:
    """The table column of an axis: aliases by their short name (`server.nodes` -> nodes)."""
    for short, path in ALIASES.items():
        if name == path:
            return short
    return name


@dataclass(frozen=True)
class Point:
    """One grid point, resolved and validated: what a worker needs to run it."""

    index: int
    axes: dict[str, Any]  # table column -> value in base units
    scenario: Scenario
    seed: int
    run_dir: str


def _number(axis: str, value: object) -> int:
    try:
        return parse_count(value)
    except ValueError as exc:
        raise GridError(f"--grid {axis}: {exc}") from None


def _resolved(data: Any, path: str) -> Any:
    for key in path.split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def _dirname(index: int, axes: Mapping[str, Any]) -> str:
    label = "_".join(f"{k}={_short(v)}" for k, v in axes.items())
    return re.sub(r"[^A-Za-z0-9._=-]", "-", f"{index:03d}_{label}" if label else f"{index:03d}")


def _short(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def grid_points(
    scenario: Scenario, grid: Grid, out_dir: str | Path, seed: int | None = None
) -> list[Point]:
    """Every point of the grid, validated before anything runs.

    A value that does not fit its field raises the scenario's own error, which names the
    field; a bad ``listeners`` or ``seed`` value raises `GridError` naming the axis.
    """
    base = scenario.model_dump(mode="json")
    out = Path(out_dir).resolve()  # workers may run elsewhere: never a relative path
    names = list(grid)
    for name in names:
        if not list(grid[name]):
            raise GridError(f"--grid {name}: no values")
    points = []
    for index, combo in enumerate(itertools.product(*(grid[n] for n in names))):
        overrides = []
        listeners: int | None = None
        run_seed = scenario.seed if seed is None else seed
        for name, value in zip(names, combo, strict=True):
            text = repr(value) if isinstance(value, float) else str(value)
            if name == "listeners":
                listeners = _number(name, value)
                if listeners <= 0:
                    raise GridError(f"--grid listeners: must be > 0, got {value!r}")
            elif name == "seed":
                run_seed = _number(name, value)
            else:
                overrides.append(f"{ALIASES.get(name, name)}={text}")
        where = ", ".join(f"{n}={v}" for n, v in zip(names, combo, strict=True))
        source = f"{scenario.name} (grid point {where})"
        sc = parse_scenario(base, source, overrides)
        if listeners is not None:
            sc = with_audience(sc, listeners)
        resolved = sc.model_dump(mode="json")
        axes: dict[str, Any] = {}
        for name in names:
            if name == "listeners":
                axes[name] = listeners
            elif name == "seed":
                axes[name] = run_seed
            else:
                axes[axis_column(name)] = _resolved(resolved, ALIASES.get(name, name))
        points.append(Point(index, axes, sc, run_seed, str(out / "runs" / _dirname(index, axes))))
    return points


# --------------------------------------------------------------------------- one point


def _run_id(sc: Scenario, seed: int) -> str:
    return f"sim-{sc.name}-{sc.content_hash()[:8]}-s{seed}"


def run_point(point: Point) -> dict[str, Any]:
    """Simulate one point (or read back its earlier run) and return its table row.

    A module-level function of a picklable argument: process pools and Dask ship it.
    """
    sc, seed = point.scenario, point.seed
    run_id = _run_id(sc, seed)
    directory = Path(point.run_dir)
    reused = False
    try:
        old = load_run(directory)
    except FileNotFoundError:
        old = None
    if old is not None and old.meta.run_id == run_id:
        records, wall, reused = old.records, old.meta.wall_seconds, True
    else:
        run = simulate(sc, seed=seed, run_id=run_id)
        write_run(directory, run.records, run.meta)
        records, wall = run.records, run.meta.wall_seconds
    summary = summarise(records, sc.duration)
    flat = metric_table(summary)
    verdicts = check_slos(summary, sc.slo.targets())
    joins = flat.get("joins.value", 0.0)
    refused = flat.get("joins_refused.value", 0.0)
    row: dict[str, Any] = {**point.axes}
    row.setdefault("listeners", round(expected_audience(sc)))
    row.setdefault("nodes", sc.server.nodes)
    row.setdefault("seed", seed)
    row.update({name: flat.get(name, math.nan) for name in FIGURES})
    row["refused_share"] = refused / (joins + refused) if joins + refused else 0.0
    row["slo_pass"] = all(v.passed is not False for v in verdicts)
    row["slo_failed"] = ",".join(v.metric for v in verdicts if v.passed is False)
    row.update(wall_seconds=wall, reused=reused, run_id=run_id, run_dir=str(directory))
    return row


# --------------------------------------------------------------------------- sweeps


def _local(points: Sequence[Point], processes: int) -> Iterable[dict[str, Any]]:
    if processes <= 1 or len(points) == 1:
        yield from map(run_point, points)
        return
    # spawn, not fork: the caller may have threads (a progress bar, a notebook kernel).
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(processes, len(points)), mp_context=ctx) as pool:
        for fut in as_completed([pool.submit(run_point, p) for p in points]):
            yield fut.result()


def _dask(points: Sequence[Point], client: Client | str) -> Iterable[dict[str, Any]]:
    from distributed import Client, as_completed

    own = isinstance(client, str)
    c = Client(client) if isinstance(client, str) else client
    try:
        futures = [c.submit(run_point, p, pure=False) for p in points]
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        if own:
            c.close()


def sweep(
    scenario: Scenario,
    grid: Grid | Iterable[str],
    out_dir: str | Path,
    *,
    client: Client | str | None = None,
    processes: int | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Run every grid point; returns one row per point and writes ``sweep.parquet/.csv``.

    `grid` maps axis names to values, or holds ``NAME=V1,V2`` strings as on the command
    line. Points run in `processes` local processes (default: every core), or on a Dask
    cluster when `client` is a ``distributed.Client`` or a scheduler address; a remote
    cluster's workers must see `out_dir`. `progress(done, total, row)` follows each point.

    Local processes are spawned, so a script that sweeps needs the usual
    ``if __name__ == "__main__":`` guard (notebooks and the CLI need nothing). If a point
    fails the sweep stops, but finished points keep their runs: run it again to resume.
    """
    axes: Grid
    if isinstance(grid, Mapping):  # a value may also be written "1,2,4", as on the CLI
        axes = {k: v.split(",") if isinstance(v, str) else v for k, v in grid.items()}
    else:
        axes = parse_grid(grid)
    points = grid_points(scenario, axes, out_dir, seed)
    if client is not None:
        rows = _dask(points, client)
    else:
        rows = _local(points, processes or os.cpu_count() or 1)
    done: list[dict[str, Any]] = []
    for row in rows:
        done.append(row)
        if progress is not None:
            progress(len(done), len(points), row)
    by_dir = {row["run_dir"]: row for row in done}
    table = pd.DataFrame([by_dir[p.run_dir] for p in points])
    table["slo_pass"] = table["slo_pass"].astype(bool)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "sweep.parquet", index=False)
    table.to_csv(out / "sweep.csv", index=False)
    return table
