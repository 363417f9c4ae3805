"""The `spacesim` command line. Nothing imports this module."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spacesim.policy import HEARD_AT_ONCE
from spacesim.results import Run, SloVerdict, check_slos, format_value, summarise, write_run
from spacesim.scenario import Scenario, ScenarioError, engine_notes, load_scenario

_REPO_SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"

# Rich falls back to 80 columns off a terminal, which truncates metric names in CI logs.
out = Console(width=None if sys.stdout.isatty() else 120)
# Errors are never folded: a CI log must keep "FILE: FIELD: reason" on one line.
err = Console(stderr=True, soft_wrap=True)


_fmt = format_value


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


def progress_bar(title: str, status: str, quiet: bool, bar: bool = True) -> Progress:
    """The commands' one progress display: on stderr, gone when done, off with --quiet."""
    columns = [TextColumn(title), *([BarColumn()] if bar else []), TextColumn(status)]
    return Progress(*columns, TimeElapsedColumn(), console=err, transient=True, disable=quiet)


def _load(path: str, overrides: Sequence[str] = ()) -> Scenario:
    return load_scenario(path, overrides)


def _replayed(path: str, overrides: Sequence[str]) -> tuple[Run, Scenario]:
    """The measured run to replay and its stored scenario (with `--set` overrides)."""
    from spacesim.analysis.runs import RunError, open_run
    from spacesim.scenario import parse_scenario

    try:
        measured = open_run(path)
    except RunError as exc:
        raise FileNotFoundError(str(exc)) from None
    if not measured.meta.scenario:
        raise FileNotFoundError(f"{path}: the run stores no scenario to replay")
    return measured, parse_scenario(measured.meta.scenario, f"{path}/meta.json", overrides)


def cmd_simulate(args: argparse.Namespace) -> int:
    from spacesim.sim import replay, simulate

    measured: Run | None = None
    if getattr(args, "replay", None):
        if args.scenario:
            err.print("spacesim simulate: give a scenario or --replay RUN, not both")
            return 2
        measured, scenario = _replayed(args.replay, args.set or ())
    elif args.scenario:
        scenario = _load(args.scenario, args.set or ())
    else:
        err.print("spacesim simulate: give a scenario file, or --replay RUN")
        return 2
    scenario = _calibrated(scenario, getattr(args, "calibration", None))
    seed = scenario.seed if args.seed is None else args.seed
    directory = Path(args.out) if args.out else None
    if directory is not None and (directory / "meta.json").exists():
        raise FileExistsError(f"{directory} already holds a run; pick another --out")
    with progress_bar(
        f"simulating [bold]{scenario.name}[/]", "{task.fields[sim]}", args.quiet
    ) as bar:
        task = bar.add_task("sim", total=scenario.duration, sim="")

        def progress(now: float, duration: float) -> None:
            bar.update(task, completed=now, sim=f"{now:,.0f} / {duration:,.0f} s simulated")

        if measured is not None:
            run = replay(measured, scenario, seed=seed, progress=progress)
        else:
            run = simulate(scenario, seed=seed, progress=progress)
    directory = directory or Path("runs") / run.meta.run_id
    write_run(directory, run.records, run.meta)
    summary = summarise(run.records, scenario.duration)
    verdicts = check_slos(summary, scenario.slo.targets())
    wall = run.meta.wall_seconds or float("nan")
    what = f"replay of {measured.meta.run_id}" if measured is not None else "independent draw"
    print_summary(
        summary,
        verdicts,
        f"{scenario.name}: {scenario.duration:,.0f} s simulated in {wall:.1f} s "
        f"({scenario.duration / wall:,.0f}x real time), {what}, seed {run.meta.seed}",
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


def _redacted(target: str) -> str:
    """A --store value fit for a log: a URL's password replaced by ***."""
    return re.sub(r"^(\w+://[^:/@]*:)[^@]*@", r"\1***@", target)


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from spacesim.server.app import ServerConfig, create_app
    from spacesim.server.auth import is_loopback_host, load_or_create_secret
    from spacesim.server.store import StoreError, is_postgres_url

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.demo_space and args.no_dev:
        err.print("spacesim serve: --demo-space needs dev mode (its host takes a dev token)")
        return 2
    if not args.no_dev and not is_loopback_host(args.host):
        if not args.dev_on_public_bind:
            err.print(
                f"spacesim serve: refusing dev mode (anyone may mint tokens) on {args.host}; "
                "bind 127.0.0.1, pass --no-dev, or force it with --dev-on-public-bind"
            )
            return 2
        logging.getLogger("spacesim.server").warning(
            "dev mode on a non-loopback bind (%s): /v1/dev/token still answers loopback "
            "clients only, but this server is for tests, not for a network",
            args.host,
        )
    shared = is_postgres_url(args.db)
    db = Path("spacesim.db" if shared else args.db)  # the files go beside it
    db.parent.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(
        db=db,
        store=args.db if shared else None,
        secret=load_or_create_secret(db.with_suffix(".secret")),
        dev=not args.no_dev,
        ice_hosts=tuple(args.ice_host or ["127.0.0.1"]),
        capacity=args.capacity,
        slots=args.slots,
        record_dir=Path(args.record) if args.record else None,
        recording_dir=Path(args.recording_dir) if args.recording_dir else None,
        posts_dir=Path(args.posts_dir) if args.posts_dir else None,
        caption_workers=args.caption_workers,
        cluster=args.cluster,
        node_id=args.node_id,
        public_url=f"http://{args.host}:{args.port}",
        relay_host=args.relay_host,
        dev_networks=tuple(args.dev_network or ()),
    )
    err.print(
        f"spacesim serve: http://{args.host}:{args.port}  store={_redacted(args.db)}"
        f"  dev={config.dev}"
        "  (the web page is at /)"
    )
    try:
        app = create_app(config)
    except StoreError as exc:  # no database there, a newer schema, a file that is not one
        err.print(f"spacesim serve: cannot open the store: {exc}")
        return 1
    if args.demo_space:
        from spacesim.server import demo_space

        host = args.host if is_loopback_host(args.host) else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        demo_space.attach(app, f"http://{host}:{args.port}", config.slots)
    # What is loaded by now (modules, aiortc, the recovered rooms) lives as long as the
    # process: frozen out of the collector's sight (gc.freeze, Python >= 3.7), a full
    # collection under load takes a few ms instead of the 70-240 ms measured with 500
    # event streams and a message flood, which /healthz waited for (tests/server/test_abuse.py).
    gc.collect()
    gc.freeze()
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0


def cmd_cluster_up(args: argparse.Namespace) -> int:
    """Redis and N nodes on loopback sharing one SQLite file: a newcomer's cluster."""
    from spacesim.server import launch

    nodes = args.nodes or os.cpu_count() or 1
    workdir = Path(args.dir)
    # SIGTERM too stops the nodes and Redis (a background job ignores SIGINT)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with launch.cluster(workdir, nodes, store=args.store) as (redis_url, procs):
        out.print(f"spacesim cluster: {nodes} nodes, Redis at {redis_url}, logs in {workdir}/")
        for i, (proc, url) in enumerate(procs, 1):
            out.print(f"  node-{i}: {url}  (pid {proc.pid})")
        out.print(f"target any node, e.g. spacesim load SCENARIO --target {procs[0][1]}")
        told: set[int] = set()  # a node that dies is reported; the others go on
        try:
            while len(told) < len(procs):
                for i, (proc, _) in enumerate(procs, 1):
                    if proc.poll() is not None and i not in told:
                        told.add(i)
                        err.print(f"spacesim cluster: node-{i} exited ({proc.returncode})")
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        return 1


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
        shape=args.shape,
        network=args.network,
        clock=args.clock,
        overrides=args.set or (),
        server_cpus=args.server_cpus,
        swarm_cpus=args.swarm_cpus,
        ice_hosts=args.ice_host or (),
        stage_cpus=args.stage_cpus,
        show=lambda summary, sc, title: print_summary(
            summary, check_slos(summary, sc.slo.targets()), title
        ),
    )


def _cpus(text: str) -> frozenset[int]:
    """A CPU list as taskset takes it: ``0``, ``0,1``, ``0-3``."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a CPU list like 0 or 0,1 or 0-3"
        ) from None
    usable = os.sched_getaffinity(0)
    if not cpus or not cpus <= usable:
        raise argparse.ArgumentTypeError(
            f"CPUs {text!r} are not all usable here (usable: {sorted(usable)})"
        )
    return frozenset(cpus)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _duration(text: str) -> float:
    from spacesim.scenario import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def demo_scenario(sc: Scenario, listeners: int, duration: float) -> Scenario:
    """`sc` cut to what one machine can swarm: `duration`, an audience peaking at
    `listeners`, one single-core node (the reference server is one Python process)."""
    peak = float(sc.audience_curve(duration).max())
    small = sc.with_audience(listeners / peak) if peak > 0 else sc
    data = small.model_dump(mode="json")
    data["duration"] = duration
    data["name"] = f"{sc.name}-demo"
    data["server"] |= {"nodes": 1, "cores": 1.0}
    return Scenario.model_validate(data)


def announce_page(url: str, seconds: float) -> None:
    """Where a person can hear the demo: the swarm's spaces, live on the page at /."""
    out.print(
        f"[bold]open {url}/ in a browser[/]: the swarm's town-hall spaces are live there for "
        f"the next {seconds:g} s (pick one and Join to hear its speakers)",
        highlight=False,
    )


@contextlib.contextmanager
def demo_server(workdir: Path, port: int | None = None) -> Iterator[str]:
    """`spacesim serve --demo-space` on 127.0.0.1 (`port`, or a free one) for the block."""
    from spacesim.server import launch

    with launch.embedded_server(workdir, args=["--demo-space"], port=port) as url:
        yield url


def keep_serving(port: int, workdir: Path) -> int:
    """After the demo: a server with the demo space on the demo's port until Ctrl-C."""
    try:
        with demo_server(workdir, port) as url:
            out.print(
                f"[bold]open {url}/ in a browser[/]: the demo space (the shipped clips, read "
                "in a loop) is live there; Ctrl-C stops the server",
                highlight=False,
            )
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def cmd_janus(args: argparse.Namespace) -> int:
    """Janus for `spacesim load --target janus://…` (spacesim.load.janus_server; root)."""
    from spacesim.deps import PartUnavailable
    from spacesim.load import janus_server

    if args.action == "up":
        try:
            inst = janus_server.up(args.name, args.index, port=args.port)
        except (janus_server.JanusError, PartUnavailable) as exc:
            err.print(f"spacesim janus: {exc}", markup=False, highlight=False)
            return 2
        print(inst.url)
        print(
            f"Janus pid {inst.pid} in namespace {inst.name} ({inst.ns_ip}, via {inst.host_if} "
            f"{inst.host_ip}); log {inst.workdir}/janus.log; AudioBridge: "
            f"{inst.url.replace('videoroom', 'audiobridge')}; stop: spacesim janus down",
            file=sys.stderr,
        )
        return 0
    if args.action == "down":
        stopped = janus_server.down(args.name)
        print("stopped" if stopped else "nothing was running", file=sys.stderr)
        return 0
    found = janus_server.find(args.name)
    if found is None:
        print(f"no Janus running in namespace {args.name}", file=sys.stderr)
        return 1
    print(found.url)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole loop on one machine: server + swarm, the same scenario simulated, report."""
    from spacesim.load.run import main as load_main

    path = _REPO_SCENARIOS / "town-hall.yaml"
    if not path.is_file():
        path = Path("scenarios/town-hall.yaml")
    full = load_scenario(path)
    root = Path(args.out) if args.out else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; pick another --out")
    root.mkdir(parents=True, exist_ok=True)
    small = demo_scenario(full, args.listeners, args.duration)
    small_path = root / "scenario.yaml"
    small_path.write_text(
        f"# {full.name} cut to one machine by `spacesim demo`: {args.listeners} listeners "
        f"at the peak, {args.duration:g} s\n" + small.to_yaml()
    )
    out.rule(f"1/3 swarm: {small.name} against the reference server ({args.duration:g} s)")
    ports: list[int] = []

    def on_url(url: str) -> None:
        ports.append(int(url.rsplit(":", 1)[1]))
        announce_page(url, args.duration)

    rc = load_main(
        small_path,
        users=small.rooms.count + args.listeners,
        duration=args.duration,
        out=root / "load",
        show=lambda summary, sc, title: print_summary(
            summary, check_slos(summary, sc.slo.targets()), title
        ),
        on_url=on_url,
    )
    if rc != 0:
        err.print(f"spacesim demo: the swarm failed (exit {rc}); see above")
        return rc
    out.rule("2/3 the swarm replayed in the simulator, then the full-size scenario simulated")
    # The replay has the swarm's own arrivals, paths and talk spurts: only the models
    # differ. Independent draws (--independent N) add chance on top, shown as a spread.
    sims: list[tuple[str | None, str | None, int | None, str]] = [
        (None, str(root / "load"), None, "sim")
    ]
    sims += [
        (str(small_path), None, s, f"sim-independent-s{s}") for s in range(1, args.independent + 1)
    ]
    sims.append((str(path), None, None, "sim-full"))
    for scenario, replay, seed, name in sims:
        ns = argparse.Namespace(
            scenario=scenario, replay=replay, seed=seed, out=str(root / name), set=[],
            quiet=False, check_slo=False,
        )  # fmt: skip
        cmd_simulate(ns)
    out.rule("3/3 reports: the swarm against its replay, and the full-size town hall")
    compared = [str(root / name) for _, _, _, name in sims[:-1]]
    rc = cmd_report(
        argparse.Namespace(runs=[str(root / "load"), *compared], out=str(root / "report.html"))
    )
    rc = rc or cmd_report(
        argparse.Namespace(runs=[str(root / "sim-full")], out=str(root / "full-size.html"))
    )
    if rc == 0 and args.keep_serving:
        return keep_serving(ports[0], root / "serve")
    return rc


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
    sys.stdout.write(
        "# Engines: every field is honoured by both the simulator (sim) and the swarm\n"
        "# (load) except these:\n"
    )
    for line in engine_notes():
        sys.stdout.write(f"#   {line}\n")
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


def cmd_report(args: argparse.Namespace) -> int:
    from spacesim.analysis import RunError

    try:
        from spacesim.analysis.report import write_report

        path = write_report(args.runs, args.out)
    except ImportError as exc:
        err.print(f"spacesim report needs the notebooks extra (matplotlib): {exc}", markup=False)
        return 2
    except (RunError, OSError) as exc:
        err.print(f"spacesim report: {exc}", markup=False, highlight=False)
        return 2
    out.print(f"report: {path}", highlight=False)
    return 0


# --------------------------------------------------------------------------- sweep, capacity

_SWEEP_COLUMNS = (  # (table column, heading, unit)
    ("concurrency.value", "peak", "count"),
    ("refused_share", "refused", "ratio"),
    ("join_time.p95", "join95", "s"),
    ("first_audio.p95", "audio1st95", "s"),
    ("audio_latency.p95", "lat95", "s"),
    ("audio_latency.p99", "lat99", "s"),
    ("delivery_ratio.value", "delivered", "ratio"),
    ("node_utilisation.p95", "util95", "ratio"),
)


def _count(text: str) -> int:
    from spacesim.scenario import parse_count

    try:
        value = parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _print_rows(rows: pd.DataFrame, keys: Sequence[str], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for heading in (*keys, *(h for _c, h, _u in _SWEEP_COLUMNS)):
        table.add_column(heading, justify="right", no_wrap=True)
    table.add_column("SLOs")
    for _, row in rows.iterrows():
        failed = set(str(row["slo_failed"]).split(","))
        cells = [f"{row[k]:,.6g}" if isinstance(row[k], float) else f"{row[k]:,}" for k in keys]
        for col, _h, unit in _SWEEP_COLUMNS:
            text = _fmt(row[col], unit)
            cells.append(f"[red]{text}[/]" if col in failed else text)
        others = sorted(failed - {c for c, _h, _u in _SWEEP_COLUMNS} - {""})
        verdict = "[green]pass[/]" if row["slo_pass"] else " ".join(["[red]FAIL[/]", *others])
        table.add_row(*cells, verdict)
    out.print(table)


def cmd_sweep(args: argparse.Namespace) -> int:
    from spacesim.sim.capacity import capacity_table
    from spacesim.sim.sweep import GridError, axis_column, grid_points, parse_grid, sweep

    scenario = _load(args.scenario, args.set or ())
    out_dir = Path(args.out) if args.out else Path("runs") / f"sweep-{scenario.name}"
    try:
        grid = parse_grid(args.grid)
        total = len(grid_points(scenario, grid, out_dir, args.seed))  # validate before running
    except GridError as exc:
        err.print(f"{args.scenario}: {exc}", markup=False, highlight=False)
        return 2
    where = f"Dask at {args.dask}" if args.dask else f"{args.processes or 'all'} processes"
    with progress_bar(
        f"sweeping [bold]{scenario.name}[/] ({where})",
        "{task.completed}/{task.total} points {task.fields[last]}",
        args.quiet,
    ) as bar:
        task = bar.add_task("sweep", total=total, last="")

        def progress(done: int, _total: int, row: dict[str, object]) -> None:
            bar.update(task, completed=done, last=Path(str(row["run_dir"])).name)

        table = sweep(
            scenario,
            grid,
            out_dir,
            client=args.dask,
            processes=args.processes,
            seed=args.seed,
            progress=progress,
        )
    axes = list(table.columns[: list(table.columns).index("seed") + 1])
    if table["seed"].nunique() == 1:
        axes.remove("seed")
    _print_rows(table, axes, f"{scenario.name}: {len(table)} points")
    out.print(f"table: {out_dir / 'sweep.parquet'} (and sweep.csv); runs: {out_dir / 'runs'}")
    if "nodes" in {axis_column(name) for name in grid}:
        by = [c for c in axes if c not in ("nodes", "seed")]
        answers = capacity_table(table, by=by)
        cap = Table(title="capacity: fewest nodes meeting every SLO", title_justify="left")
        for col in (*by, "nodes needed"):
            cap.add_column(col, justify="right")
        for col in ("tested", "note"):
            cap.add_column(col)
        for _, row in answers.iterrows():
            needed = row["nodes_needed"]
            cells = [f"{row[c]:,}" if not isinstance(row[c], str) else row[c] for c in by]
            shown = "[red]none[/]" if pd.isna(needed) else f"{int(needed):,}"
            cap.add_row(*cells, shown, str(row["tested"]), str(row["note"]))
        out.print(cap)
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from spacesim.sim.capacity import capacity, meets

    if not args.listeners and args.spaces is None and args.speakers is None:
        err.print(
            "spacesim capacity: give --listeners N (server nodes) or --spaces N / "
            "--speakers K (caption workers and disk)"
        )
        return 2
    scenario = _calibrated(_load(args.scenario, args.set or ()), args.calibration)
    out_dir = Path(args.out) if args.out else Path("runs") / f"capacity-{scenario.name}"
    if args.spaces is not None or args.speakers is not None:
        _caption_and_disk(args, scenario, out_dir)
    missing = 0
    for listeners in args.listeners or ():
        with progress_bar(
            f"sizing [bold]{scenario.name}[/] for {listeners:,} listeners",
            "{task.fields[last]}",
            args.quiet,
            bar=False,
        ) as bar:
            bar.add_task("capacity", total=None, last="")

            def progress(nodes: int, row: dict[str, object], bar: Progress = bar) -> None:
                ok = meets(pd.DataFrame([row]), args.max_refused).iloc[0]
                bar.update(bar.task_ids[0], last=f"{nodes:,} nodes {'meet' if ok else 'fail'}")

            answer = capacity(
                scenario,
                listeners,
                max_nodes=args.max_nodes,
                out_dir=out_dir / f"listeners={listeners}",
                seed=args.seed,
                max_refused=args.max_refused,
                rel_tol=args.rel_tol,
                progress=progress,
            )
        _print_rows(answer.curve, ["nodes"], f"{scenario.name}: {listeners:,} listeners")
        out.print(str(answer), highlight=False)
        missing += answer.nodes is None
    return 1 if missing else 0


def _caption_and_disk(args: argparse.Namespace, scenario: Scenario, out_dir: Path) -> None:
    """`spacesim capacity --spaces N --speakers K`: caption workers and disk, from one
    simulation of the scenario with N spaces, K talking in each, captioned and recorded."""
    from spacesim.protocol import CLIP_RETENTION_S
    from spacesim.sim.capacity import caption_and_disk, feature_overrides, format_bytes

    extra = feature_overrides(scenario, args.spaces, args.speakers)
    sets = [*extra, *(args.set or ())]  # --set has the last word
    scenario = _calibrated(_load(args.scenario, sets), args.calibration)
    name = f"spaces={scenario.rooms.count},speakers={scenario.speaking.active_speakers}"
    directory = out_dir / name
    if (directory / "meta.json").exists():
        raise FileExistsError(f"{directory} already holds a run; pick another --out")
    with progress_bar(
        f"simulating [bold]{scenario.name}[/] ({name})", "{task.fields[sim]}", args.quiet
    ) as bar:
        task = bar.add_task("sim", total=scenario.duration, sim="")

        def progress(now: float, duration: float) -> None:
            bar.update(task, completed=now, sim=f"{now:,.0f} / {duration:,.0f} s simulated")

        answer = caption_and_disk(
            scenario,
            clip_retention=args.clip_retention or CLIP_RETENTION_S,
            seed=args.seed,
            out_dir=directory,
            progress=progress,
        )
    table = Table(title=f"{scenario.name}: caption workers and disk ({name})")
    for col in ("figure", "value"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    nodes = f"{answer.nodes} node(s)"
    rows = [
        ("caption cores, busiest node, peak", f"{answer.asr_peak:.2f} cores"),
        ("caption cores, busiest node, p95", f"{answer.asr_p95:.2f} cores"),
        (f"caption cores, all {nodes}, peak", f"{answer.asr_total_peak:.2f} cores"),
        ("speaking streams, busiest node, peak", f"{answer.streams_peak}"),
        (
            "--caption-workers per node",
            "-" if answer.workers is None else f"{answer.workers}",
        ),
        ("recording bytes over the run", format_bytes(answer.recording_bytes)),
        ("recording bytes per recorded space-hour", format_bytes(answer.bytes_per_space_hour)),
        ("bytes written per hour (recordings + clips)", format_bytes(answer.write_rate * 3600)),
        ("clip bytes over the run", format_bytes(answer.clip_bytes)),
        (
            f"clip bytes held ({answer.clip_retention / 86_400:.0f}-day retention, "
            "around the clock)",
            format_bytes(answer.clips_retained),
        ),
    ]
    for row in rows:
        table.add_row(*row)
    out.print(table)
    out.print(str(answer), highlight=False)
    out.print(f"run: {directory}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spacesim", description="Load-test and simulate live audio rooms."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser("simulate", help="simulate a scenario and summarise it")
    sim.add_argument("scenario", nargs="?", help="scenario YAML file (not with --replay)")
    sim.add_argument(
        "--replay",
        metavar="RUN_DIR",
        help="simulate a measured load run like for like: its scenario, arrivals, session "
        "lengths, network paths, talk spurts and actions (only the server and network "
        "models differ)",
    )
    sim.add_argument("--seed", type=_seed, help="random seed (default: the scenario's)")
    sim.add_argument("--out", help="run directory (default: runs/RUN_ID)")
    sim.add_argument(
        "--set", action="append", metavar="PATH=VALUE", help="override a field, e.g. server.nodes=4"
    )
    sim.add_argument("--calibration", metavar="FILE", help="server costs from spacesim calibrate")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.add_argument(
        "--check-slo", action="store_true", help="exit 1 when any SLO fails (for CI jobs)"
    )
    sim.set_defaults(func=cmd_simulate)

    serve = sub.add_parser("serve", help="run the reference room server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--store",
        "--db",
        dest="db",
        default="spacesim.db",
        metavar="PATH|URL",
        help="where durable state lives: a SQLite file (created if absent; nodes on one "
        "machine may share it) or a postgresql://user:password@host:port/db URL (nodes on "
        "several machines share it; the schema is created on first connect). Default "
        "spacesim.db; the secret, recordings and posts' audio go beside the file (for a URL: "
        "spacesim.secret, spacesim-recordings/ and spacesim-posts/ in the current directory)",
    )
    serve.add_argument(
        "--ice-host", action="append", help="address for ICE host candidates (default 127.0.0.1)"
    )
    serve.add_argument(
        "--capacity", type=int, help="forwarded streams before joins are refused with 503"
    )
    serve.add_argument(
        "--slots",
        type=int,
        default=HEARD_AT_ONCE,
        help="speakers each listener hears at once",
    )
    serve.add_argument(
        "--recording-dir",
        help="where recorded spaces and clips go (default: <db name>-recordings/ beside --store)",
    )
    serve.add_argument(
        "--posts-dir",
        help="where voice posts' and DMs' audio goes (default: <db name>-posts/ beside --store)",
    )
    serve.add_argument("--no-dev", action="store_true", help="disable /v1/dev/token")
    serve.add_argument(
        "--dev-on-public-bind",
        action="store_true",
        help="allow dev mode with a non-loopback --host (logs a warning)",
    )
    serve.add_argument("--record", metavar="DIR", help="write the server's records here on exit")
    serve.add_argument(
        "--demo-space",
        action="store_true",
        help="host a live space that reads the shipped clips in a loop (for the web page at /)",
    )
    serve.add_argument(
        "--caption-workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="speech recogniser processes for live captions (default 1)",
    )
    serve.add_argument(
        "--cluster",
        metavar="REDIS_URL",
        help="join a cluster of nodes through Redis (redis://HOST:PORT/DB); the nodes share "
        "--db and its secret (docs/protocol.md, Cluster)",
    )
    serve.add_argument("--node-id", help="this node's id in the cluster (default: a random one)")
    serve.add_argument(
        "--relay-host",
        metavar="ADDR",
        help="address of this node's relay socket, which other nodes send a room's packets "
        "to (default: the first --ice-host), e.g. a private network between the nodes",
    )
    serve.add_argument(
        "--dev-network",
        action="append",
        metavar="CIDR",
        help="clients in this network may take dev tokens too (repeatable; default: "
        "loopback only), e.g. a test's veth pairs to nodes in network namespaces",
    )
    serve.set_defaults(func=cmd_serve)

    clus = sub.add_parser("cluster", help="run a cluster of server nodes on this machine")
    clus_sub = clus.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    up = clus_sub.add_parser("up", help="start redis-server and N nodes until Ctrl-C")
    up.add_argument(
        "--nodes", type=_positive_int, default=None, help="nodes to start (default: one per core)"
    )
    up.add_argument("--dir", default="spacesim-cluster", help="database, logs and Redis dir")
    up.add_argument(
        "--store",
        metavar="URL",
        help="a postgresql:// store for the nodes (default: one SQLite file in --dir)",
    )
    up.set_defaults(func=cmd_cluster_up)

    load = sub.add_parser("load", help="run a scenario's Locust users against a server")
    load.add_argument("scenario", help="scenario YAML file")
    load.add_argument(
        "--target",
        metavar="URL",
        help="the server under test; its scheme picks the driver: http://HOST:PORT "
        "(spacesim) or janus://HOST[:PORT][/PATH][?plugin=videoroom|audiobridge] "
        "(Janus; see `spacesim janus up`). Default: start a spacesim server on 127.0.0.1",
    )
    load.add_argument("-u", "--users", type=int, help="peak Locust users incl. one host per room")
    load.add_argument("-r", "--spawn-rate", type=float, help="users started per second")
    load.add_argument("-t", "--duration", type=_duration, help="run time, e.g. 30s, 2m")
    load.add_argument("--workers", type=int, default=0, help="locust --processes N")
    load.add_argument("--out", help="run directory (default: runs/RUN_ID)")
    load.add_argument(
        "--set",
        action="append",
        metavar="PATH=VALUE",
        help="override a field, e.g. features.captions=1 (as spacesim simulate's --set)",
    )
    load.add_argument(
        "--shape",
        choices=("arrivals", "steady"),
        default="arrivals",
        help="arrivals: users follow the scenario's arrival profile, peaking at -u "
        "(default); steady: -u users throughout",
    )
    load.add_argument(
        "--network",
        choices=("scenario", "none"),
        default="scenario",
        help="scenario: each client gets the scenario's delay, jitter and loss through a "
        "user-space relay (default); none: plain loopback",
    )
    load.add_argument(
        "--clock",
        choices=("local", "server"),
        default="local",
        help="local: latencies on this machine's clock (default); server: every Locust "
        "process reads the server's clock through an offset (workers on several machines)",
    )
    load.add_argument(
        "--server-cpus",
        type=_cpus,
        metavar="LIST",
        help="pin the embedded server to these CPUs, e.g. 0 (a figure that depends on the "
        "server's core then is not shared with the swarm's)",
    )
    load.add_argument(
        "--swarm-cpus",
        type=_cpus,
        metavar="LIST",
        help="pin the swarm (Locust and browser probes) to these CPUs, e.g. 1",
    )
    load.add_argument(
        "--ice-host",
        action="append",
        metavar="ADDR",
        help="an address the swarm's clients gather ICE candidates on (repeatable; default "
        "127.0.0.1): a target on another machine or network namespace needs one it reaches",
    )
    load.add_argument(
        "--stage-cpus",
        type=_cpus,
        metavar="LIST",
        help="run the hosts and their stage (every sender) in a Locust process of their "
        "own pinned to these CPUs, e.g. 0, so senders send on time however busy the "
        "audience's process is",
    )
    load.set_defaults(func=cmd_load)

    janus = sub.add_parser(
        "janus", help="start or stop a Janus gateway in a network namespace (a load target)"
    )
    jsub = janus.add_subparsers(dest="action", required=True, metavar="ACTION")
    jup = jsub.add_parser("up", help="start Janus in its namespace; prints the target URL")
    jdown = jsub.add_parser("down", help="stop Janus and remove its namespace")
    jstatus = jsub.add_parser("status", help="print the running instance's target URL")
    for jp in (jup, jdown, jstatus):
        jp.add_argument("--name", default="spacesim-janus", help="namespace name")
    jup.add_argument(
        "--index", type=int, default=0, help="subnet 10.213.INDEX.0/30 of the veth pair (0..255)"
    )
    jup.add_argument("--port", type=int, default=8088, help="Janus's HTTP API port")
    janus.set_defaults(func=cmd_janus)

    demo = sub.add_parser(
        "demo", help="server + swarm + simulation + report of the town-hall scenario"
    )
    demo.add_argument("--out", help="directory for the runs and report (default: runs/demo-TIME)")
    demo.add_argument(
        "--listeners", type=int, default=30, help="swarm listeners at the peak (default 30)"
    )
    demo.add_argument(
        "-t", "--duration", type=_duration, default=60.0, help="swarm run time (default 60s)"
    )
    demo.add_argument(
        "--independent",
        type=_count,
        default=0,
        metavar="SEEDS",
        help="also simulate the scenario with independent draws over SEEDS seeds; the report "
        "shows their spread next to the replay (default 0: the replay only)",
    )
    demo.add_argument(
        "--keep-serving",
        action="store_true",
        help="after the reports, serve the web page with a demo space (the shipped clips in "
        "a loop) on the same address until Ctrl-C",
    )
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

    report = sub.add_parser("report", help="write one HTML report about one or more runs")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories to compare")
    report.add_argument("-o", "--out", default="report.html", help="HTML file to write")
    report.set_defaults(func=cmd_report)

    cal = sub.add_parser("calibrate", help="fit the model's server costs from load runs")
    cal.add_argument("runs", nargs="+", metavar="RUN_DIR", help="load run directories")
    cal.add_argument("-o", "--out", default="calibration.yaml", help="calibration file to write")
    cal.set_defaults(func=cmd_calibrate)

    sweep = sub.add_parser("sweep", help="simulate a scenario over a grid of overrides")
    sweep.add_argument("scenario", help="scenario YAML file")
    sweep.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="NAME=V1,V2",
        help="an axis: listeners, nodes, seed or a field path (server.cores=2,4); repeatable",
    )
    sweep.add_argument("--dask", metavar="ADDRESS", help="run on this Dask scheduler")
    sweep.add_argument("--processes", type=int, help="local processes (default: every core)")
    sweep.add_argument("--out", help="sweep directory (default: runs/sweep-NAME)")
    sweep.add_argument("--seed", type=_seed, help="random seed (default: the scenario's)")
    sweep.add_argument("--set", action="append", metavar="PATH=VALUE", help="fixed override")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(func=cmd_sweep)

    cap = sub.add_parser(
        "capacity",
        help="fewest nodes meeting a scenario's SLOs (--listeners); caption workers and "
        "disk (--spaces, --speakers)",
    )
    cap.add_argument("scenario", help="scenario YAML file")
    cap.add_argument(
        "--listeners",
        type=_count,
        action="append",
        help="audience, e.g. 100k: the fewest server nodes meeting the SLOs",
    )
    cap.add_argument(
        "--spaces",
        type=_count,
        help="spaces at once (rooms.count): caption workers and disk for them, each "
        "captioned and recorded unless the scenario's features say otherwise",
    )
    cap.add_argument(
        "--speakers",
        type=_count,
        help="speakers talking in each space (speaking.active_speakers; the stage grows "
        "to seat them)",
    )
    cap.add_argument("--calibration", metavar="FILE", help="server costs from spacesim calibrate")
    cap.add_argument(
        "--clip-retention",
        type=_duration,
        help="how long clips are kept (default: the server's, 30 days)",
    )
    cap.add_argument("--max-nodes", type=_count, default=10_000, help="search 1..M nodes")
    cap.add_argument("--max-refused", type=float, default=0.0, help="share of joins refused")
    cap.add_argument("--rel-tol", type=float, default=0.0, help="stop within this share")
    cap.add_argument("--out", help="directory for the probes (default: runs/capacity-NAME)")
    cap.add_argument("--seed", type=_seed, help="random seed (default: the scenario's)")
    cap.add_argument("--set", action="append", metavar="PATH=VALUE", help="fixed override")
    cap.add_argument("--quiet", action="store_true", help="no progress bar")
    cap.set_defaults(func=cmd_capacity)

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


def _calibrated(scenario: Scenario, calibration: str | None) -> Scenario:
    """`scenario` with a calibration file's server section applied (`simulate --calibration`)."""
    if not calibration:
        return scenario
    from spacesim.sim.calibrate import apply_calibration

    return apply_calibration(scenario, calibration)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit server costs from load runs, write the calibration file, show the residuals."""
    from spacesim.sim.calibrate import CalibrationError, calibrate

    try:
        cal = calibrate(args.runs)
    except CalibrationError as exc:
        err.print(f"spacesim calibrate: {exc}", markup=False, highlight=False)
        return 2
    table = Table(title=f"calibration from {len(args.runs)} run(s)", title_justify="left")
    for col in ("server field", "value", "std error"):
        table.add_column(col, justify="right" if col != "server field" else "left")
    fits = [
        (what, fit, unit)
        for what, fit, unit in (
            ("cpu", cal.cpu, "cores"),
            ("latency", cal.latency, "s"),
            ("asr", cal.asr, "cores"),
            ("recording", cal.recording, "bytes"),
            ("gc pause", cal.gc, "s"),
        )
        if fit is not None
    ]
    stderr: dict[str, float] = {}
    for _what, fit, _unit in fits:
        stderr |= fit.stderr
    for name, value in cal.server.items():
        table.add_row(name, f"{value:.4g}", f"{stderr.get(name, math.nan):.2g}")
    out.print(table)
    for what, fit, unit in fits:
        out.print(f"{what} fit: rms {fit.rms:.3g} {unit}, R² {fit.r2:.3f}, {fit.samples} points")
        for run, r in fit.per_run.items():
            out.print(f"  {run}: rms {r['rms']:.3g} {unit}, bias {r['bias']:+.3g} {unit}")
    if cal.recording is not None:
        silence = cal.recording.coef["silence_frame_bytes"]
        out.print(f"  (silence fill: {silence:.3g} bytes a frame; not in the model)")
    for note in cal.notes:
        out.print(f"note: {note}", highlight=False)
    for entry in cal.runs:
        if entry.get("swarm_behind"):
            out.print(f"  {entry['dir']}: not in the latency fit: {entry['swarm_behind']}")
    path = cal.write(args.out)
    out.print(f"calibration -> {path}")
    return 0


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
