"""`spacesim regress`: a performance-regression gate for CI that machine noise cannot fool.

A gate run repeats a short canonical scenario (``scenarios/ci-regression.yaml``) against
the reference server several times and compares five figures with a reference:

========================  ======================================  =====================
figure                    from (`spacesim.results.summarise`)     worse when
========================  ======================================  =====================
``cpu_per_packet``        the server's own run: ``.value``        higher
``audio_latency_p95``     the load run: ``audio_latency.p95``     higher
``join_time_p95``         the load run: ``join_time.p95``         higher
``first_audio_p95``       the load run: ``first_audio.p95``       higher
``delivery_ratio``        the load run: ``delivery_ratio.value``  lower
========================  ======================================  =====================

The reference is either a baseline file (``--baseline``, written by
``--update-baseline``: per-run values, the machine and the versions) or, with
``--against REF``, the server of another checkout or git revision, run in the same job
and interleaved A B B A A B … so that drift of a shared machine hits both sides alike.

Statistics: one value per run and figure (runs, not packets, are the independent
samples); the median of each side; a seeded percentile-bootstrap interval (95 %,
2,000 resamples) of the ratio now / reference of the medians. A figure regresses only
when the whole interval is worse than its tolerance *and* the medians differ by more
than its floor (an absolute amount below which nobody cares, e.g. 2 ms of loopback
latency). Tolerances are generous for the p95s, which a busy neighbour moves, and
tight for CPU per packet, which is process CPU time and hardly moves.

The server's CPU comes from its own records (``node_cpu`` and ``packets_forwarded``,
``spacesim serve --record``); the test-only fault hook ``SPACESIM_TEST_FAULT_BUSY_US``
(`spacesim.server.media`) is passed to the current server only, never to REF's.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from spacesim.results import load_run, metric_table, summarise
from spacesim.scenario import load_scenario

__all__ = [
    "FIGURES",
    "Baseline",
    "BaselineError",
    "Comparison",
    "Figure",
    "RegressError",
    "compare",
    "junit_xml",
    "markdown",
    "read_baseline",
    "write_baseline",
]

BASELINE_FORMAT = "spacesim-regress-baseline/1"
FAULT_ENV = "SPACESIM_TEST_FAULT_BUSY_US"  # spacesim.server.media.FAULT_ENV (no aiortc import)
_REPO = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT = 30.0


class RegressError(Exception):
    """A gate run that cannot go ahead or cannot measure; the message says why."""


class BaselineError(RegressError):
    """A missing, unreadable or incomparable baseline file; the message names the file."""


@dataclass(frozen=True)
class Figure:
    """One compared figure: where it comes from, which way is worse and how much is noise."""

    name: str
    label: str
    metric: str  # key of `metric_table(summarise(...))`
    source: str  # "server" (the server's own run) or "load" (the clients' run)
    unit: str  # display unit; `scale` converts the summary's SI value to it
    scale: float
    higher_is_worse: bool
    tolerance: float  # relative change of the medians that is still fine
    floor: float  # absolute change (SI units) below which no verdict is "worse"


#: The gate's figures and their default tolerances (a baseline file may override them).
#: The p95s are the swarm's view and a busy machine moves them a lot (run-to-run
#: coefficient of variation ~0.5 for join time on a shared 2-core machine, against
#: ~0.08 for CPU per packet): at +30 % a neighbour's burst during three runs of one side
#: gave a false alarm (benchmarks/bench_regress.py), so they get +50 %.
FIGURES: tuple[Figure, ...] = (
    Figure("cpu_per_packet", "server CPU per packet", "cpu_per_packet.value", "server",
           "µs", 1e6, True, 0.10, 0.0),
    Figure("audio_latency_p95", "audio latency p95", "audio_latency.p95", "load",
           "ms", 1e3, True, 0.50, 0.005),
    Figure("join_time_p95", "join time p95", "join_time.p95", "load",
           "ms", 1e3, True, 0.50, 0.050),
    Figure("first_audio_p95", "time to first audio p95", "first_audio.p95", "load",
           "ms", 1e3, True, 0.50, 0.050),
    Figure("delivery_ratio", "delivery ratio", "delivery_ratio.value", "load",
           "%", 100.0, False, 0.01, 0.0),
)  # fmt: skip

# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Comparison:
    """One figure's verdict: medians, relative change and its bootstrap interval."""

    figure: Figure
    base: tuple[float, ...]
    now: tuple[float, ...]
    base_median: float
    now_median: float
    change: float  # now_median / base_median - 1
    low: float  # interval of `change`
    high: float
    verdict: str  # "ok", "regression", "better" or "no data"

    @property
    def regressed(self) -> bool:
        return self.verdict == "regression"

    @property
    def inconclusive(self) -> bool:
        """ "ok", but the interval reaches past the tolerance on both sides: the runs are
        too noisy to tell (a busy machine's latency p95s often are)."""
        tol = self.figure.tolerance
        return self.verdict == "ok" and self.low < -tol and self.high > tol


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype="float64")
    out: np.ndarray = a[np.isfinite(a)]
    return out


def _floats(a: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in a)


def compare(
    fig: Figure,
    base: Sequence[float],
    now: Sequence[float],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Judge one figure: percentile-bootstrap interval of the ratio of medians.

    Deterministic for a given seed. "regression" needs the whole interval beyond the
    tolerance in the worse direction and the medians further apart than the floor;
    "better" is the mirror image; fewer than two values on a side give "no data".
    """
    a, b = _finite(base), _finite(now)
    if a.size < 2 or b.size < 2:
        nan = math.nan
        ma = float(np.median(a)) if a.size else nan
        mb = float(np.median(b)) if b.size else nan
        ch = mb / ma - 1 if a.size and b.size and ma else nan
        return Comparison(fig, _floats(a), _floats(b), ma, mb, ch, nan, nan, "no data")
    rng = np.random.default_rng(seed)
    med_a = np.median(a[rng.integers(0, a.size, (resamples, a.size))], axis=1)
    med_b = np.median(b[rng.integers(0, b.size, (resamples, b.size))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(med_a != 0, med_b / med_a, np.where(med_b == 0, 1.0, np.inf))
    lo, hi = (float(q) - 1 for q in np.quantile(ratio, [(1 - level) / 2, (1 + level) / 2]))
    ma, mb = float(np.median(a)), float(np.median(b))
    change = mb / ma - 1 if ma else (0.0 if mb == 0 else math.inf)
    worse = mb - ma if fig.higher_is_worse else ma - mb  # > 0: the worse direction
    tol = fig.tolerance
    if fig.higher_is_worse:
        regressed, better = lo > tol, hi < -tol
    else:
        regressed, better = hi < -tol, lo > tol
    if regressed and worse > fig.floor:
        verdict = "regression"
    elif better and -worse > fig.floor:
        verdict = "better"
    else:
        verdict = "ok"
    return Comparison(fig, _floats(a), _floats(b), ma, mb, change, lo, hi, verdict)


def compare_all(
    figures: Sequence[Figure],
    base: Mapping[str, Sequence[float]],
    now: Mapping[str, Sequence[float]],
    seed: int = 0,
) -> list[Comparison]:
    """`compare` for every figure (a figure missing on a side has no data)."""
    return [compare(f, base.get(f.name, ()), now.get(f.name, ()), seed=seed) for f in figures]


# --------------------------------------------------------------------------- baseline


@dataclass(frozen=True)
class Baseline:
    """A recorded reference: per-run values of each figure, and what produced them."""

    scenario: str
    scenario_hash: str
    values: dict[str, list[float]]
    figures: tuple[Figure, ...] = FIGURES
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""


def machine_description() -> dict[str, Any]:
    """What a CPU-per-packet figure depends on: CPU model, cores, OS, Python."""
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "node": platform.node(),
    }


def _git_describe(tree: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(tree), "describe", "--always", "--dirty", "--abbrev=10"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def versions(tree: Path | None = None) -> dict[str, Any]:
    """Versions of spacesim (and its git revision) and of the packages on the hot path."""
    out: dict[str, Any] = {}
    for pkg in ("spacesim", "aiortc", "aiohttp", "aioice", "pylibsrtp", "locust"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["git"] = _git_describe(tree or _REPO)
    return out


def write_baseline(path: Path, baseline: Baseline) -> Path:
    """Write a baseline file (JSON; tolerances included so a team can tune them)."""
    doc = {
        "format": BASELINE_FORMAT,
        "scenario": baseline.scenario,
        "scenario_hash": baseline.scenario_hash,
        "created_at": baseline.created_at,
        "machine": baseline.machine,
        "versions": baseline.versions,
        "figures": {
            f.name: {
                "values": baseline.values.get(f.name, []),
                "unit": "SI (s, ratio)",
                "worse": "higher" if f.higher_is_worse else "lower",
                "tolerance": f.tolerance,
                "floor": f.floor,
            }
            for f in baseline.figures
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _mapping(x: Any) -> dict[str, Any]:
    return dict(x) if isinstance(x, dict) else {}


def read_baseline(path: Path) -> Baseline:
    """Read and check a baseline file; `BaselineError` names the file and the problem."""
    if not path.is_file():
        raise BaselineError(
            f"{path}: no such baseline file; record one with "
            f"`spacesim regress --update-baseline --baseline {path}` "
            "or compare with another revision using `--against REF`"
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: cannot read the baseline: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BaselineError(
            f"{path}: not a baseline file: invalid JSON at line {exc.lineno} column "
            f"{exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(doc, dict):
        raise BaselineError(f"{path}: not a baseline file: expected a JSON object")
    if doc.get("format") != BASELINE_FORMAT:
        raise BaselineError(
            f"{path}: format: expected {BASELINE_FORMAT!r}, got {doc.get('format')!r}"
        )
    for key in ("scenario", "scenario_hash"):
        if not isinstance(doc.get(key), str):
            raise BaselineError(f"{path}: {key}: expected a string")
    raw = doc.get("figures")
    if not isinstance(raw, dict):
        raise BaselineError(f"{path}: figures: expected an object of figure -> values")
    known = {f.name: f for f in FIGURES}
    figures: list[Figure] = []
    values: dict[str, list[float]] = {}
    for name, entry in raw.items():
        where = f"{path}: figures.{name}"
        if name not in known:
            raise BaselineError(f"{where}: unknown figure (known: {', '.join(known)})")
        if not isinstance(entry, dict) or not isinstance(entry.get("values"), list):
            raise BaselineError(f"{where}.values: expected a list of numbers")
        vals = entry["values"]
        if not all(_number(v) for v in vals):
            raise BaselineError(f"{where}.values: expected a list of numbers, got {vals!r}")
        limits = {"tolerance": known[name].tolerance, "floor": known[name].floor}
        for attr in limits:
            if attr in entry:
                x = entry[attr]
                if not _number(x) or not 0 <= x < math.inf:
                    raise BaselineError(f"{where}.{attr}: expected a number >= 0, got {x!r}")
                limits[attr] = float(x)
        figures.append(replace(known[name], tolerance=limits["tolerance"], floor=limits["floor"]))
        values[name] = [float(v) for v in vals]
    if not figures:
        raise BaselineError(f"{path}: figures: the baseline holds no figures")
    order = [f.name for f in FIGURES]
    figures.sort(key=lambda f: order.index(f.name))
    return Baseline(
        scenario=doc["scenario"],
        scenario_hash=doc["scenario_hash"],
        values=values,
        figures=tuple(figures),
        machine=_mapping(doc.get("machine")),
        versions=_mapping(doc.get("versions")),
        created_at=str(doc.get("created_at", "")),
    )


# --------------------------------------------------------------------------- reports


def _show(fig: Figure, x: float) -> str:
    if not math.isfinite(x):
        return "—"
    v = x * fig.scale
    digits = 2 if fig.unit == "%" else 1
    return f"{v:,.{digits}f} {fig.unit}"


def _runs(fig: Figure, values: Sequence[float]) -> str:
    return "[" + ", ".join(_show(fig, x) for x in values) + "]"


def _pct(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x * 100:+.1f} %"


_MARK = {
    "ok": "✅ ok",
    "regression": "❌ **regression**",
    "better": "✅ better",
    "no data": "⚠️ no data",
}


def markdown(comparisons: Sequence[Comparison], title: str, notes: Sequence[str] = ()) -> str:
    """The verdict table a pull request shows (GitHub-flavoured markdown)."""
    bad = [c.figure.name for c in comparisons if c.regressed]
    head = f"### {title}: " + (f"❌ regression in {', '.join(bad)}" if bad else "✅ no regression")
    lines = [head, ""]
    lines += [f"{n}  " for n in notes]
    if notes:
        lines.append("")
    lines += [
        "| figure | baseline | now | change | 95 % interval | tolerance | verdict |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    for c in comparisons:
        f = c.figure
        tol = f"{'+' if f.higher_is_worse else '-'}{f.tolerance * 100:.0f} %"
        interval = "—" if not math.isfinite(c.low) else f"{_pct(c.low)} … {_pct(c.high)}"
        mark = "✅ ok (too noisy to tell)" if c.inconclusive else _MARK[c.verdict]
        lines.append(
            f"| {f.label} | {_show(f, c.base_median)} | {_show(f, c.now_median)} | "
            f"{_pct(c.change)} | {interval} | {tol} | {mark} |"
        )
    lines += [
        "",
        "Medians over runs; the interval is a 95 % bootstrap interval of now / baseline. "
        "A figure regresses only when the whole interval is past its tolerance; "
        '"too noisy to tell" means it reaches past the tolerance on both sides.',
    ]
    return "\n".join(lines) + "\n"


def junit_xml(comparisons: Sequence[Comparison], suite: str) -> str:
    """JUnit XML: one testcase per figure, a failure per regression, skipped for no data."""
    root = ET.Element("testsuites")
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(comparisons)),
        failures=str(sum(c.regressed for c in comparisons)),
        skipped=str(sum(c.verdict == "no data" for c in comparisons)),
        errors="0",
    )
    for c in comparisons:
        f = c.figure
        case = ET.SubElement(ts, "testcase", classname=suite, name=f.name)
        text = (
            f"{f.label}: baseline {_show(f, c.base_median)}, now {_show(f, c.now_median)}, "
            f"change {_pct(c.change)} (95 % interval {_pct(c.low)} … {_pct(c.high)}), "
            f"tolerance {f.tolerance:.0%}; baseline runs {_runs(f, c.base)}, "
            f"now runs {_runs(f, c.now)}"
        )
        if c.regressed:
            ET.SubElement(
                case, "failure", message=f"{f.name} regressed", type="regression"
            ).text = text
        elif c.verdict == "no data":
            ET.SubElement(case, "skipped", message="no data on one side")
        ET.SubElement(case, "system-out").text = text
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Side:
    """Which server code a run uses: a source tree (None: this installation)."""

    label: str
    tree: Path | None
    fault: bool  # pass the test-only fault hook's environment variable to its server


def _server_env(side: Side) -> tuple[dict[str, str], str]:
    """The server's environment and working directory: only `side.tree` is importable."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONSAFEPATH"] = "1"  # the working directory never shadows the tree
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    if not side.fault:
        env.pop(FAULT_ENV, None)
    tree = side.tree
    if tree is None and (_REPO / "spacesim").is_dir():
        tree = _REPO
    rest = env.get("PYTHONPATH", "")
    if tree is not None:
        env["PYTHONPATH"] = f"{tree}{os.pathsep}{rest}" if rest else str(tree)
    return env, str(tree or Path.cwd())


def check_side(side: Side) -> None:
    """Make sure the side's server would import its own tree's spacesim."""
    env, cwd = _server_env(side)
    code = "import spacesim.server.app, spacesim; print(spacesim.__file__)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RegressError(f"{side.label}: its spacesim server does not import: {tail[0]}")
    if side.tree is not None:
        found = Path(proc.stdout.strip()).resolve()
        if side.tree.resolve() not in found.parents:
            raise RegressError(f"{side.label}: imports spacesim from {found}, not {side.tree}")


@contextlib.contextmanager
def _server(side: Side, workdir: Path, record: Path) -> Iterator[str]:
    from spacesim.server import launch

    env, cwd = _server_env(side)
    log_path = workdir / "server.log"
    port = launch.free_port()
    db = str(workdir.resolve() / "server.db")
    record = record.resolve()  # the server runs in its own tree's directory
    cmd = [sys.executable, "-m", "spacesim.cli", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--db", db, "--record", str(record)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            try:
                launch.wait_up(proc, url, SERVER_START_TIMEOUT)
            except launch.ServerUnavailable as exc:
                tail = log_path.read_text(errors="replace")[-1500:]
                raise RegressError(
                    f"{side.label}: the server did not start: {exc}\n{tail}"
                ) from None
            yield url
        finally:
            launch.stop(proc)


def _figures_of(out: Path) -> dict[str, float]:
    load = metric_table(summarise(load_run(out / "load").records))
    server_dir = out / "server"
    server = metric_table(summarise(load_run(server_dir).records)) if server_dir.is_dir() else {}
    got: dict[str, float] = {}
    for f in FIGURES:
        table = server if f.source == "server" else load
        got[f.name] = table.get(f.metric, math.nan)
    return got


def measure(scenario: Path, side: Side, out: Path) -> dict[str, float]:
    """One run of the scenario against `side`'s server: the figures (NaN when absent).

    The load run goes to ``out/load``, the server's own run to ``out/server`` and both
    processes' output to ``out/run.log``.
    """
    from spacesim.load.run import main as load_main

    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "run.log"
    with tempfile.TemporaryDirectory(prefix="spacesim-regress-") as tmp:
        try:
            with (
                _server(side, Path(tmp), out / "server") as url,
                open(log_file, "w") as log,
                contextlib.redirect_stdout(log),
                contextlib.redirect_stderr(log),
            ):
                # A fixed audience on plain loopback: the gate wants the server's own
                # latency, not a simulated network's jitter or an arrival curve.
                rc = load_main(
                    scenario,
                    target=url,
                    out=out / "load",
                    show=lambda *a: None,
                    shape="steady",
                    network="none",
                )
        finally:
            server_log = Path(tmp) / "server.log"
            if server_log.is_file():
                shutil.copy(server_log, out / "server.log")
    if rc != 0 or not (out / "load" / "meta.json").is_file():
        tail = log_file.read_text(errors="replace")[-1500:]
        raise RegressError(f"{side.label}: the load run failed (exit {rc}); see {log_file}\n{tail}")
    return _figures_of(out)


def _say(msg: str) -> None:
    print(f"spacesim regress: {msg}", file=sys.stderr, flush=True)


def _brief(fig_values: Mapping[str, float]) -> str:
    parts = []
    for f in FIGURES:
        x = fig_values.get(f.name, math.nan)
        parts.append(f"{f.name}={_show(f, x)}")
    return ", ".join(parts)


def run_series(
    scenario: Path,
    sides: Sequence[Side],
    repeat: int,
    out: Path,
    say: Callable[[str], None] = _say,
) -> list[dict[str, list[float]]]:
    """`repeat` runs per side; two sides alternate A B, B A, A B … (balanced order).

    A run that fails is retried once; a second failure raises `RegressError`.
    """
    values: list[dict[str, list[float]]] = [{f.name: [] for f in FIGURES} for _ in sides]
    total = repeat * len(sides)
    n = 0
    for k in range(repeat):
        order = list(range(len(sides)))
        if k % 2:
            order.reverse()
        for i in order:
            n += 1
            side = sides[i]
            t = time.monotonic()
            try:
                got = measure(scenario, side, out / f"{n:02d}-{side.label}")
            except RegressError as exc:  # one retry: a shared CI machine has hiccups
                say(f"run {n}/{total} ({side.label}) failed, retrying once: {exc}")
                got = measure(scenario, side, out / f"{n:02d}-{side.label}-retry")
            for name, x in got.items():
                values[i][name].append(x)
            say(f"run {n}/{total} ({side.label}, {time.monotonic() - t:.0f} s): {_brief(got)}")
    return values


# --------------------------------------------------------------------------- REF


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, timeout=120, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RegressError(f"--against needs git: {exc}") from None


def checkout(ref: str, into: Path, repo: Path = _REPO) -> tuple[Path, str]:
    """REF as a source tree: a directory holding spacesim, or a git revision exported
    (``git archive``, no worktree left behind) into `into`. Returns (tree, description)."""
    as_dir = Path(ref)
    if as_dir.is_dir():
        tree = as_dir.resolve()
        desc = f"{ref} ({_git_describe(tree) or 'not a git checkout'})"
    else:
        if _git(repo, "rev-parse", "--git-dir").returncode != 0:
            raise RegressError(
                f"--against {ref}: {repo} is not a git repository and {ref} is not a directory"
            )
        rev = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        if rev.returncode != 0:
            raise RegressError(f"--against {ref}: no such git revision in {repo}")
        sha = rev.stdout.decode().strip()
        archive = _git(repo, "archive", "--format=tar", sha)
        if archive.returncode != 0:
            raise RegressError(f"--against {ref}: git archive failed: {archive.stderr.decode()}")
        tree = into / f"ref-{sha[:10]}"
        tree.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                tar.extractall(tree, filter="data")
            else:  # our own repository's archive
                tar.extractall(tree)
        desc = f"{ref} ({sha[:10]})"
    for need in ("spacesim/cli.py", "spacesim/server/app.py"):
        if not (tree / need).is_file():
            raise RegressError(
                f"--against {ref}: {tree} has no spacesim server ({need} is missing)"
            )
    return tree, desc


# --------------------------------------------------------------------------- the gate


@dataclass
class Options:
    """What `spacesim regress` was asked to do (the CLI fills it)."""

    scenario: Path
    baseline: Path
    repeat: int = 3
    against: str | None = None
    update_baseline: bool = False
    junit: Path | None = None
    markdown: Path | None = None
    out: Path | None = None
    seed: int = 0


def _notes_for(baseline: Baseline) -> list[str]:
    notes = []
    here = machine_description()
    there = baseline.machine
    for key in ("cpu", "cpus"):
        if there.get(key) is not None and there.get(key) != here.get(key):
            notes.append(
                f"⚠️ baseline recorded on a different machine ({key}: {there.get(key)!r}, "
                f"here {here.get(key)!r}): CPU figures may not be comparable"
            )
    return notes


def gate(opts: Options, say: Callable[[str], None] = _say) -> int:
    """Run the gate; 0 = no regression (or baseline written), 1 = regression."""
    if opts.repeat < 2:
        raise RegressError(
            f"--repeat must be at least 2 (3 or more recommended), got {opts.repeat}"
        )
    if opts.against and opts.update_baseline:
        raise RegressError("--against compares two servers directly; it takes no --update-baseline")
    sc = load_scenario(opts.scenario)
    baseline: Baseline | None = None
    if not opts.against and not opts.update_baseline:
        baseline = read_baseline(opts.baseline)  # fail before any run
        if baseline.scenario_hash != sc.content_hash():
            raise BaselineError(
                f"{opts.baseline}: recorded for scenario {baseline.scenario!r} "
                f"({baseline.scenario_hash[:12]}), but {opts.scenario} is now "
                f"{sc.content_hash()[:12]}: re-record it with --update-baseline"
            )
    out = opts.out or Path("runs") / f"regress-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    fault = os.environ.get(FAULT_ENV, "").strip()
    if fault:
        say(f"TEST-ONLY FAULT: {FAULT_ENV}={fault} is passed to the current server")
    now = Side("now", None, fault=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spacesim-regress-ref-") as tmp:
        if opts.against:
            tree, desc = checkout(opts.against, Path(tmp))
            ref = Side("ref", tree, fault=False)
            check_side(ref)
            check_side(now)
            say(f"{sc.name}: {opts.repeat} runs each of REF {desc} and now, interleaved -> {out}")
            base_vals, now_vals = run_series(opts.scenario, [ref, now], opts.repeat, out, say)
            figures = FIGURES
            notes = [f"baseline: `{desc}` · now: `{_git_describe(_REPO) or 'this installation'}` "
                     f"· {opts.repeat} + {opts.repeat} runs interleaved"]  # fmt: skip
        else:
            check_side(now)
            say(f"{sc.name}: {opts.repeat} runs -> {out}")
            (now_vals,) = run_series(opts.scenario, [now], opts.repeat, out, say)
            if opts.update_baseline:
                written = write_baseline(
                    opts.baseline,
                    Baseline(
                        scenario=sc.name,
                        scenario_hash=sc.content_hash(),
                        values=now_vals,
                        machine=machine_description(),
                        versions=versions(),
                        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    ),
                )
                say(f"baseline of {opts.repeat} runs written to {written}")
                return 0
            assert baseline is not None
            base_vals, figures = baseline.values, baseline.figures
            notes = [
                f"baseline: `{opts.baseline}` ({len(next(iter(base_vals.values()), []))} runs, "
                f"{baseline.created_at}, {baseline.versions.get('git') or '?'}) · now: "
                f"`{_git_describe(_REPO) or 'this installation'}` · {opts.repeat} runs",
                *_notes_for(baseline),
            ]
    if opts.repeat < 3:
        notes.append(
            f"⚠️ {opts.repeat} runs a side: the interval is little more than the range of "
            "the runs; use --repeat 3 or more for a verdict to rely on"
        )
    if fault:
        notes.append(f"⚠️ test-only fault injected in the current server: {FAULT_ENV}={fault}")
    notes.append(f"scenario `{sc.name}` · gate time {time.monotonic() - t0:.0f} s")
    comparisons = compare_all(figures, base_vals, now_vals, seed=opts.seed)
    md = markdown(comparisons, f"spacesim regress: {sc.name}", notes)
    print(md)
    (out / "regress.md").write_text(md)
    (out / "regress.json").write_text(
        json.dumps({"baseline": base_vals, "now": now_vals}, indent=2) + "\n"
    )
    if opts.markdown:
        opts.markdown.parent.mkdir(parents=True, exist_ok=True)
        opts.markdown.write_text(md)
    if opts.junit:
        opts.junit.parent.mkdir(parents=True, exist_ok=True)
        opts.junit.write_text(junit_xml(comparisons, f"spacesim.regress.{sc.name}"))
    return 1 if any(c.regressed for c in comparisons) else 0
