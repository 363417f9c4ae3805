"""The `spacesim` command line. Nothing imports this module."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spacesim.results import SloVerdict, check_slos, summarise, write_run
from spacesim.scenario import Scenario, ScenarioError, load_scenario

_REPO_SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"

# Rich falls back to 80 columns off a terminal, which truncates metric names in CI logs.
out = Console(width=None if sys.stdout.isatty() else 120)
# Errors are never folded: a CI log must keep "FILE: FIELD: reason" on one line.
err = Console(stderr=True, soft_wrap=True)


def _fmt(value: object, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    x = float(value)  # type: ignore[arg-type]
    if unit == "s":
        return f"{x * 1000:.1f} ms" if abs(x) < 10 else f"{x:.1f} s"
    if unit == "ratio":
        return f"{x:.2%}"
    if unit in ("count", "listeners"):
        return f"{x:,.0f}"
    return f"{x:,.3g}"


def print_summary(summary: pd.DataFrame, verdicts: Sequence[SloVerdict], title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for col in ("count", "mean", "p50", "p95", "p99", "value"):
        table.add_column(col, justify="right")
    for metric, row in summary.iterrows():
        unit = str(row["unit"])
        count = "" if pd.isna(row["count"]) else f"{int(row['count']):,}"
        cells = [_fmt(row[c], unit) for c in ("mean", "p50", "p95", "p99", "value")]
        table.add_row(str(metric), count, *cells)
    out.print(table)
    if verdicts:
        slo = Table(title="SLOs", title_justify="left")
        for col in ("objective", "target", "actual", "verdict"):
            slo.add_column(col)
        for v in verdicts:
            unit = "ratio" if v.metric.startswith("delivery") else "s"
            verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "no data"}[v.passed]
            slo.add_row(
                v.metric, f"{v.op} {_fmt(v.threshold, unit)}", _fmt(v.actual, unit), verdict
            )
        out.print(slo)


def _load(path: str, overrides: Sequence[str] = ()) -> Scenario:
    return load_scenario(path, overrides)


def cmd_simulate(args: argparse.Namespace) -> int:
    from spacesim.sim import simulate

    scenario = _load(args.scenario, args.set or ())
    seed = scenario.seed if args.seed is None else args.seed
    directory = Path(args.out) if args.out else None
    if directory is not None and (directory / "meta.json").exists():
        raise FileExistsError(f"{directory} already holds a run; pick another --out")
    with Progress(
        TextColumn(f"simulating [bold]{scenario.name}[/]"),
        BarColumn(),
        TextColumn("{task.fields[sim]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=args.quiet,
    ) as bar:
        task = bar.add_task("sim", total=scenario.duration, sim="")

        def progress(now: float, duration: float) -> None:
            bar.update(task, completed=now, sim=f"{now:,.0f} / {duration:,.0f} s simulated")

        run = simulate(scenario, seed=seed, progress=progress)
    directory = directory or Path("runs") / run.meta.run_id
    write_run(directory, run.records, run.meta)
    summary = summarise(run.records, scenario.duration)
    verdicts = check_slos(summary, scenario.slo.targets())
    wall = run.meta.wall_seconds or float("nan")
    print_summary(
        summary,
        verdicts,
        f"{scenario.name}: {scenario.duration:,.0f} s simulated in {wall:.1f} s "
        f"({scenario.duration / wall:,.0f}x real time), seed {run.meta.seed}",
    )
    out.print(f"records: {len(run.records):,} -> {directory}")
    failed = [v.metric for v in verdicts if v.passed is False]
    if args.check_slo and failed:
        err.print(f"SLOs failed: {', '.join(failed)}")
        return 1
    return 0


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: what log shippers and `jq` expect from a server."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from spacesim.server.app import ServerConfig, create_app
    from spacesim.server.auth import load_or_create_secret

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    db = Path(args.db)
    db.parent.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(
        db=db,
        secret=load_or_create_secret(db.with_suffix(".secret")),
        dev=not args.no_dev,
        ice_hosts=tuple(args.ice_host or ["127.0.0.1"]),
        capacity=args.capacity,
        slots=args.slots,
        record_dir=Path(args.record) if args.record else None,
    )
    err.print(f"spacesim serve: http://{args.host}:{args.port}  db={db}  dev={config.dev}")
    web.run_app(create_app(config), host=args.host, port=args.port, print=None)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from spacesim.load.run import main as load_main

    return load_main(
        args.scenario,
        target=args.target,
        users=args.users,
        duration=args.duration,
        workers=args.workers,
        out=args.out,
        spawn_rate=args.spawn_rate,
        show=lambda summary, sc, title: print_summary(
            summary, check_slos(summary, sc.slo.targets()), title
        ),
    )


def _duration(text: str) -> float:
    from spacesim.scenario import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_demo(args: argparse.Namespace) -> int:
    scenario = _REPO_SCENARIOS / "town-hall.yaml"
    if not scenario.is_file():
        scenario = Path("scenarios/town-hall.yaml")
    ns = argparse.Namespace(
        scenario=str(scenario), seed=None, out=args.out, set=[], quiet=False, check_slo=False
    )
    return cmd_simulate(ns)


def cmd_check(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            sc = load_scenario(path)
        except ScenarioError as exc:
            err.print(str(exc), markup=False, highlight=False)
            failed += 1
        else:
            out.print(f"{path}: ok ({sc.name}, {sc.duration:,.0f} s)", highlight=False)
    return 1 if failed else 0


def cmd_show(args: argparse.Namespace) -> int:
    sc = _load(args.file, args.set or ())
    sys.stdout.write(f"# {args.file} resolved: seconds, events per second, fractions\n")
    sys.stdout.write(sc.to_yaml())
    return 0


def cmd_regress(args: argparse.Namespace) -> int:
    from spacesim.regress import Options, RegressError, gate

    scenario = Path(args.scenario or _REPO_SCENARIOS / "ci-regression.yaml")
    if not args.scenario and not scenario.is_file():
        scenario = Path("scenarios/ci-regression.yaml")
    baseline = Path(args.baseline or f"benchmarks/baselines/{scenario.stem}.json")
    opts = Options(
        scenario=scenario,
        baseline=baseline,
        repeat=args.repeat,
        against=args.against,
        update_baseline=args.update_baseline,
        junit=Path(args.junit) if args.junit else None,
        markdown=Path(args.markdown) if args.markdown else None,
        out=Path(args.out) if args.out else None,
    )
    try:
        return gate(opts)
    except RegressError as exc:
        err.print(f"spacesim regress: {exc}", markup=False, highlight=False)
        return 2


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("seeds are whole numbers >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spacesim", description="Load-test and simulate live audio rooms."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser("simulate", help="simulate a scenario and summarise it")
    sim.add_argument("scenario", help="scenario YAML file")
    sim.add_argument("--seed", type=_seed, help="random seed (default: the scenario's)")
    sim.add_argument("--out", help="run directory (default: runs/RUN_ID)")
    sim.add_argument(
        "--set", action="append", metavar="PATH=VALUE", help="override a field, e.g. server.nodes=4"
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.add_argument(
        "--check-slo", action="store_true", help="exit 1 when any SLO fails (for CI jobs)"
    )
    sim.set_defaults(func=cmd_simulate)

    serve = sub.add_parser("serve", help="run the reference room server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--db", default="spacesim.db", help="SQLite database (created if absent)")
    serve.add_argument(
        "--ice-host", action="append", help="address for ICE host candidates (default 127.0.0.1)"
    )
    serve.add_argument(
        "--capacity", type=int, help="forwarded streams before joins are refused with 503"
    )
    serve.add_argument("--slots", type=int, default=3, help="speakers each listener hears at once")
    serve.add_argument("--no-dev", action="store_true", help="disable /v1/dev/token")
    serve.add_argument("--record", metavar="DIR", help="write the server's records here on exit")
    serve.set_defaults(func=cmd_serve)

    load = sub.add_parser("load", help="run a scenario's Locust users against a server")
    load.add_argument("scenario", help="scenario YAML file")
    load.add_argument(
        "--target", metavar="URL", help="server base URL (default: start one on 127.0.0.1)"
    )
    load.add_argument("-u", "--users", type=int, help="Locust users incl. one host per room")
    load.add_argument("-r", "--spawn-rate", type=float, help="users started per second")
    load.add_argument("-t", "--duration", type=_duration, help="run time, e.g. 30s, 2m")
    load.add_argument("--workers", type=int, default=0, help="locust --processes N")
    load.add_argument("--out", help="run directory (default: runs/RUN_ID)")
    load.set_defaults(func=cmd_load)

    demo = sub.add_parser("demo", help="simulate the town-hall scenario and summarise it")
    demo.add_argument("--out", help="run directory (default: runs/RUN_ID)")
    demo.set_defaults(func=cmd_demo)

    scen = sub.add_parser("scenario", help="check or show scenario files")
    ssub = scen.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = ssub.add_parser("check", help="validate scenario files")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=cmd_check)
    show = ssub.add_parser("show", help="print a scenario with every default resolved")
    show.add_argument("file")
    show.add_argument("--set", action="append", metavar="PATH=VALUE")
    show.set_defaults(func=cmd_show)

    reg = sub.add_parser(
        "regress", help="CI gate: fail when server CPU per packet, latency or joins get worse"
    )
    reg.add_argument("scenario", nargs="?", help="scenario (default scenarios/ci-regression.yaml)")
    reg.add_argument("--baseline", help="baseline file (default benchmarks/baselines/NAME.json)")
    reg.add_argument("--update-baseline", action="store_true", help="record a new baseline")
    reg.add_argument(
        "--against", metavar="REF", help="A/B: a git revision or checkout run in the same job"
    )
    reg.add_argument("--repeat", type=int, default=3, help="runs per side (default 3)")
    reg.add_argument("--junit", metavar="FILE", help="write JUnit XML (one test per figure)")
    reg.add_argument("--markdown", metavar="FILE", help="write the markdown table")
    reg.add_argument("--out", help="directory for the runs (default runs/regress-TIME)")
    reg.set_defaults(func=cmd_regress)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ScenarioError as exc:
        err.print(str(exc), markup=False, highlight=False)
        return 2
    except (FileExistsError, FileNotFoundError) as exc:
        err.print(f"spacesim: {exc}", markup=False, highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
