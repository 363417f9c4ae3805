"""Open run directories and compare runs side by side.

Runs are read only through `spacesim.results` (`load_run`, `summarise`, `check_slos`),
so a notebook, a report and `spacesim simulate` print the same numbers for one run.

A load run may hold the server's own run (``source=server``) in the subdirectory its
``meta.extra["server_run"]`` names. Summaries take the server's figures the way
`spacesim.results.summarise_run` does; views and plots take only its node records
(CPU, packets forwarded and dropped), shifted onto the load run's clock: its events
repeat what the load users measured and would count twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from spacesim.results import Run, SloVerdict, check_slos, load_run, summarise_run
from spacesim.scenario import Scenario

__all__ = [
    "NODE_KINDS",
    "RunError",
    "compare_summaries",
    "frames",
    "labels",
    "open_run",
    "open_runs",
    "records",
    "scenario_of",
    "server_run",
    "slo_table",
    "slo_verdicts",
    "summary",
]

#: Kinds a server run adds to its load run (everything else the load users measured).
NODE_KINDS = ("node_cpu", "node_utilisation", "packets_forwarded", "packets_dropped")


class RunError(ValueError):
    """A path that is not a readable run directory; the message names the path."""


def open_run(path: str | Path) -> Run:
    """`load_run` with one error type whose message names the path and the fault."""
    p = Path(path)
    if not p.is_dir():
        raise RunError(f"{p}: not a run directory (no such directory)")
    try:
        return load_run(p)
    except FileNotFoundError as exc:
        raise RunError(str(exc)) from None
    except (OSError, ValueError, TypeError) as exc:  # bad JSON, bad Parquet, bad meta fields
        raise RunError(f"{p}: not a readable run directory: {exc}") from None


def open_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Open several runs; the first bad path raises `RunError`."""
    return [open_run(p) for p in paths]


def server_run(run: Run) -> Run | None:
    """The server's own run stored inside a load run, or None when there is none.

    Found through ``meta.extra["server_run"]`` (as `summarise_run` finds it); a
    directory without both files is treated as absent, one with both that cannot be
    read raises `RunError`.
    """
    name = run.meta.extra.get("server_run")
    if run.path is None or not isinstance(name, str) or not name:
        return None
    sub = run.path / name
    if not ((sub / "meta.json").is_file() and (sub / "records.parquet").is_file()):
        return None
    return open_run(sub)


def _clock_offset(run: Run, server: Run) -> float:
    """Seconds to add to server times to put them on the run's clock.

    Exact when both metas carry ``extra["t0_unix"]`` (the Unix time of their t = 0);
    otherwise from ``started_at`` (1 s resolution, and a load run's start is stamped
    before its embedded server starts, so a few seconds off).
    """
    t0, s0 = run.meta.extra.get("t0_unix"), server.meta.extra.get("t0_unix")
    if isinstance(t0, int | float) and isinstance(s0, int | float):
        return float(s0) - float(t0)
    try:
        a = datetime.fromisoformat(run.meta.started_at)
        b = datetime.fromisoformat(server.meta.started_at)
        return (b - a).total_seconds()
    except (TypeError, ValueError):
        return 0.0


def records(run: Run) -> pd.DataFrame:
    """The run's records plus, for a load run, its server's node records.

    Server times are shifted onto the run's clock (see `_clock_offset`), so a CPU
    curve and a latency curve share one time axis.
    """
    server = server_run(run)
    if server is None:
        return run.records
    nodes = server.records[server.records["kind"].isin(NODE_KINDS)].copy()
    if nodes.empty:
        return run.records
    nodes["t"] = nodes["t"] + _clock_offset(run, server)
    both = pd.concat(
        [run.records.astype({"kind": str}), nodes.astype({"kind": str})], ignore_index=True
    )
    both["kind"] = both["kind"].astype("category")
    return both.sort_values("t", kind="stable").reset_index(drop=True)


def labels(runs: Sequence[Run]) -> list[str]:
    """Short unique names for runs: ``source: scenario (run id)``; a simulation says
    whether it replays a measured run or draws independently (``sim (replay): …``,
    ``sim (independent draw): …``; runs from before replays existed say neither)."""
    out: list[str] = []
    for run in runs:
        m = run.meta
        source = m.source
        if m.extra.get("replay_of"):
            source = f"{source} (replay)"
        elif m.extra.get("draws") == "independent":
            source = f"{source} (independent draw)"
        base = f"{source}: {m.scenario_name} ({m.run_id})"
        name, k = base, 2
        while name in out:
            name, k = f"{base} #{k}", k + 1
        out.append(name)
    return out


def frames(runs: Sequence[Run]) -> dict[str, pd.DataFrame]:
    """``{label: records}`` for every run, in order: what the plots take."""
    return dict(zip(labels(runs), (records(r) for r in runs), strict=True))


def scenario_of(run: Run) -> Scenario | None:
    """The scenario stored in the run's meta.json, or None (server runs store none)."""
    if not run.meta.scenario:
        return None
    try:
        return Scenario.model_validate(run.meta.scenario)
    except ValidationError:
        return None


def summary(run: Run) -> pd.DataFrame:
    """`summarise_run`: the table `spacesim simulate` and `spacesim load` print."""
    return summarise_run(run)


def slo_verdicts(run: Run) -> list[SloVerdict]:
    """The run's scenario SLOs judged by `check_slos`; empty without a scenario."""
    sc = scenario_of(run)
    return [] if sc is None else check_slos(summary(run), sc.slo.targets())


def slo_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per (objective, run): target, actual and verdict (True / False / None)."""
    rows = []
    for name, run in zip(labels(runs), runs, strict=True):
        for v in slo_verdicts(run):
            actual = math.nan if v.actual is None else v.actual
            rows.append(
                {
                    "metric": v.metric,
                    "run": name,
                    "op": v.op,
                    "target": v.threshold,
                    "actual": actual,
                    "passed": v.passed,
                }
            )
    return pd.DataFrame(rows, columns=["metric", "run", "op", "target", "actual", "passed"])


def compare_summaries(runs: Sequence[Run]) -> pd.DataFrame:
    """Summaries side by side: columns ``(run label, stat)``, one row per metric."""
    parts = {name: summary(run) for name, run in zip(labels(runs), runs, strict=True)}
    units = pd.concat([s["unit"] for s in parts.values()]).groupby(level=0).first()
    table = pd.concat(
        {name: s.drop(columns="unit") for name, s in parts.items()}, axis=1, sort=False
    )
    table[("", "unit")] = units.reindex(table.index)
    return table
