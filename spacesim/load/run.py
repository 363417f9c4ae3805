"""`spacesim load`: run a scenario's Locust users headless against a spacesim server.

Locust runs in a subprocess (its gevent monkey-patching must not touch this process):

1. without ``target``, start the reference server (``spacesim serve``) on a free
   127.0.0.1 port with a temporary database and wait for ``/healthz``; it records its
   own run (CPU, packets forwarded, events; ``source=server``) into ``OUT/server``;
2. check the target (a clear error, exit 2, if it is unreachable or not what its URL
   says): spacesim's ``/healthz``, or for ``janus://…`` Janus's ``/info`` and its
   plugin (`spacesim.load.targets`: the URL's scheme picks the swarm's driver). For a
   Janus started by ``spacesim janus up`` (`spacesim.load.janus_server`), a sampler
   records Janus's CPU and the UDP datagrams it sent (``/proc/PID/stat``,
   ``/proc/PID/net/snmp``) each second as the server's run in ``OUT/server``, the
   same records the embedded server writes, so ``cpu_per_packet`` is comparable;
   features the target lacks (voice posts, browser probes, the actions its driver
   answers `Unsupported`) are listed after the summary;
3. run ``locust -f loadtests/locustfile.py --headless -u N -r R -t T --host URL --csv
   OUT/locust/locust --html OUT/locust/report.html`` (``--processes W`` when
   ``workers`` > 0), streaming its output; every process writes
   ``OUT/parts/part-<host>-<pid>.parquet`` (workers send theirs to the master, which writes them);
   with ``load.browser_probes`` > 0, a helper process (`spacesim.load.browser`) runs
   that many headless Chromium listeners beside it and writes
   ``OUT/parts/part-browser-<pid>.parquet`` (its log: ``OUT/browser.log``);
4. merge the parts into one run directory (`write_run`) and print `summarise_run`.

Every step has a timeout: the Locust run is killed ``GRACE`` seconds after its
run time.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from spacesim import policy
from spacesim.load import targets
from spacesim.load.nodes import NodeSampler
from spacesim.load.shape import DEFAULT_LISTENERS, posters, scaled_users
from spacesim.load.state import read_t0
from spacesim.results import (
    Recorder,
    Run,
    RunMeta,
    records_frame,
    summarise_run,
    unsupported_actions,
    write_run,
)
from spacesim.scenario import Scenario, ScenarioError, load_scenario
from spacesim.server import launch

__all__ = ["LoadError", "default_users", "main"]

MAX_DEFAULT_LISTENERS = DEFAULT_LISTENERS  # per run, when the caller gives no -u
MAX_USERS = 900  # one UDP socket per connection; stay under a 1024 fd limit per process
MAX_DEFAULT_DURATION = 600.0
GRACE = 60.0  # seconds past the run time before Locust is killed
SERVER_START_TIMEOUT = 20.0
SERVER_RUN = "server"  # the embedded server's own run: a run directory inside the load run
HEALTH_TIMEOUT = 5.0
#: What audio_latency's two ends were read on, as the run's meta says it.
CLOCK_NOTES = {
    "local": "monotonic, one machine",
    "server": "server's monotonic clock via each process's offset (+-rtt/2 over HTTP)",
}
LAG_WARNING = 0.05  # swarm loop lag (p95, s) beyond which the run's latencies are suspect
_REPO = Path(__file__).resolve().parents[2]
_FALLBACK_LOCUSTFILE = (
    "import locust  # noqa: F401\n"
    "from spacesim.load.users import Host, Listener, Poster, ScenarioShape  # noqa: E402\n"
)


class LoadError(Exception):
    """A load run that cannot go ahead; the message says why."""


Show = Callable[[pd.DataFrame, Scenario, str], None]


def _say(msg: str) -> None:
    print(f"spacesim load: {msg}", file=sys.stderr, flush=True)


def default_users(sc: Scenario, horizon: float) -> tuple[int, float]:
    """(Locust users, spawn rate per s): hosts plus the audience's peak within `horizon`.

    The peak is that of the M/G/∞ audience curve (`Scenario.audience_curve`), capped at
    `MAX_DEFAULT_LISTENERS`; the spawn rate is the curve's steepest climb (at least 1/s).
    """
    curve = sc.audience_curve(horizon)
    listeners = max(1, min(math.ceil(float(curve.max())), MAX_DEFAULT_LISTENERS))
    climb = float(np.diff(scaled_users(curve, listeners)).max(initial=0))
    return sc.rooms.count + posters(sc) + listeners, max(1.0, min(climb, 20.0))


def check_target(url: str, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
    """spacesim's ``GET url/healthz``, or a Janus target's ``/info``: the answer, or
    `LoadError` naming what is wrong."""
    try:
        if targets.driver_of(url) == "janus":
            return targets.check_janus(url, timeout)
        return launch.health(url, timeout)
    except (launch.ServerUnavailable, targets.TargetError) as exc:
        raise LoadError(str(exc)) from None


@contextlib.contextmanager
def target_meter(
    url: str | None, server_dir: Path, run_id: str, sc: Scenario, every: float = 1.0
) -> Iterator[None]:
    """For a Janus target `spacesim janus up` started: its CPU and packets sent, sampled
    every `every` s in a thread, written as the server's run (source=server) in
    `server_dir` when the block ends. Nothing for spacesim targets (an embedded server
    records itself; a remote one is not measured) or a Janus of unknown process."""
    if url is None or targets.driver_of(url) != "janus":
        yield
        return
    from spacesim.load.janus import JanusTarget
    from spacesim.load.janus_server import JanusMeter, find

    inst = find(host=JanusTarget.parse(url).host)
    if inst is None:
        _say(
            f"Janus's CPU is not measured: no Janus started by `spacesim janus up` at {url} "
            "(cpu_per_packet needs its process and its namespace's interface)"
        )
        yield
        return
    meter = JanusMeter(inst.pid)
    rec = Recorder(run_id, "server")
    stop = threading.Event()
    t0 = time.time()

    def sample() -> None:
        cpu, pkts, t = meter.cpu_seconds(), meter.packets(), time.monotonic()
        while True:
            stopped = stop.wait(every)
            try:
                cpu2, pkts2, t2 = meter.cpu_seconds(), meter.packets(), time.monotonic()
            except OSError:  # Janus went away
                return
            now = time.time() - t0
            if t2 > t:  # at the stop, the part of an interval since the last sample too
                rec.add("node_cpu", now, "", "janus", "node", (cpu2 - cpu) / (t2 - t))
                rec.add("packets_forwarded", now, "", "janus", "node", pkts2 - pkts)
            cpu, pkts, t = cpu2, pkts2, t2
            if stopped:
                return

    thread = threading.Thread(target=sample, name="janus-meter", daemon=True)
    thread.start()
    _say(f"measuring Janus (pid {inst.pid}): its CPU and UDP datagrams sent, from /proc")
    try:
        yield
    finally:
        stop.set()
        thread.join(every + 5)
        if len(rec):
            meta = RunMeta(
                run_id=run_id,
                source="server",
                scenario_name=sc.name,
                scenario_hash=sc.content_hash(),
                seed=sc.seed,
                started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
                duration=time.time() - t0,
                extra={"target": url, "pid": inst.pid, "packets": "UDP datagrams sent"},
            )
            write_run(server_dir, rec.to_frame(), meta)


def target_lacks(sc: Scenario, url: str | None) -> list[str]:
    """Run-level features of the scenario the target cannot serve (voice posts, browser
    probes: both speak spacesim's HTTP API)."""
    if url is None or targets.driver_of(url) == "spacesim":
        return []
    asked = {
        "posts": posters(sc) > 0,
        "browser_probes": planned_browser_probes(sc) > 0,
        "server.max_streams": server_capacity(sc) is not None,  # its admission is its own
        "server.slots": server_slots(sc) != policy.HEARD_AT_ONCE,  # and its slots
    }
    return [feature for feature, wanted in asked.items() if wanted]


@contextlib.contextmanager
def embedded_server(
    workdir: Path,
    record: Path | None = None,
    cpus: Collection[int] | None = None,
    capacity: int | None = None,
    slots: int | None = None,
) -> Iterator[str]:
    """`spacesim serve` on a free loopback port with a temporary database.

    With `record`, the server writes its own run (source=server: its CPU, packets
    forwarded and events) there when it stops; with `cpus`, it is pinned to them; with
    `capacity` (the scenario's ``server.max_streams``), it refuses joins beyond that
    many forwarded streams, as the model's node does; with `slots` (``server.slots``),
    each listener receives that many speakers at once.
    """
    args = ["--record", str(record)] if record is not None else []
    if capacity is not None:
        args += ["--capacity", str(capacity)]
    if slots is not None:
        args += ["--slots", str(slots)]
    try:
        with launch.embedded_server(
            workdir, SERVER_START_TIMEOUT, env=_child_env(), args=args, cpus=cpus
        ) as url:
            _say(f"embedded server at {url}")
            yield url
    except launch.ServerUnavailable as exc:
        raise LoadError(f"the embedded server did not start: {exc}") from None


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    path = env.get("PYTHONPATH", "")
    if (_REPO / "spacesim").is_dir():  # a source checkout: children import the same code
        env["PYTHONPATH"] = f"{_REPO}{os.pathsep}{path}" if path else str(_REPO)
    env.update(extra)
    return env


def _locustfile(workdir: Path) -> Path:
    repo = _REPO / "loadtests" / "locustfile.py"
    if repo.is_file():
        return repo
    path = workdir / "locustfile.py"
    path.write_text(_FALLBACK_LOCUSTFILE)
    return path


def _raise_fd_limit(users: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = users * 4 + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _pump(stream: IO[bytes], sink: IO[str]) -> None:
    for line in iter(stream.readline, b""):
        sink.write(line.decode(errors="replace"))
        sink.flush()


def _run_locust(
    cmd: Sequence[str], env: dict[str, str], timeout: float, cpus: Collection[int] | None = None
) -> int:
    _say(" ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    launch.pin(proc, cpus)
    assert proc.stdout is not None
    reader = threading.Thread(target=_pump, args=(proc.stdout, sys.stderr), daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _say(f"locust did not finish within {timeout:.0f} s: stopping it")
        launch.stop(proc)
        rc = -1
    except BaseException:
        launch.stop(proc)
        raise
    finally:
        reader.join(5)
        proc.stdout.close()
    return rc


STAGE_MARGIN = 5.0  # s the hosts' process outlives the audience's (it starts first)


def _with_option(cmd: Sequence[str], option: str, value: str) -> list[str]:
    out = list(cmd)
    out[out.index(option) + 1] = value
    return out


def _stage_split(
    cmd: Sequence[str],
    env: dict[str, str],
    sc: Scenario,
    n_users: int,
    run_time: float,
    workdir: Path,
    stage_cpus: Collection[int],
    swarm_cpus: Collection[int] | None,
) -> int:
    """The hosts in one Locust process (``Host`` users only, pinned to `stage_cpus`),
    the audience in another (``Listener`` and ``Poster``, pinned to `swarm_cpus`).

    In one process, a stage member's packets are sent by the event loop that also
    receives every listener's audio: when that loop runs late, a sender sends its
    missed 20 ms slots in a burst, and the burst queues at the server (real queueing
    with a cause in the rig, which periodic senders do not have). Here the senders'
    loop has nothing else to do. The hosts' process writes each space it opens to a
    file (``SPACESIM_SPACES_FILE``) that the audience's process reads
    (`spacesim.load.state.State.wait_for_space`); it starts first and stops
    `STAGE_MARGIN` s after the audience's run time, so the audience never outlives
    its spaces. Returns the audience's exit code (or the stage's, if that failed).
    """
    hosts = sc.rooms.count
    locust_dir = Path(cmd[cmd.index("--csv") + 1]).parent
    stage = _with_option(cmd, "-u", str(hosts))
    stage = _with_option(stage, "-r", str(hosts))
    stage = _with_option(stage, "-t", f"{math.ceil(run_time + STAGE_MARGIN)}s")
    stage = _with_option(stage, "--csv", str(locust_dir / "stage"))
    stage = _with_option(stage, "--html", str(locust_dir / "stage.html"))
    stage = [*stage, "Host"]
    audience = [*_with_option(cmd, "-u", str(n_users - hosts)), "Listener", "Poster"]
    common = dict(env, SPACESIM_SPACES_FILE=str(workdir / "spaces"))
    _say(" ".join(stage))
    proc = subprocess.Popen(
        stage, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=dict(common, SPACESIM_ROLE="stage"),
    )  # fmt: skip
    launch.pin(proc, stage_cpus)
    assert proc.stdout is not None
    reader = threading.Thread(target=_pump, args=(proc.stdout, sys.stderr), daemon=True)
    reader.start()
    try:
        rc = _run_locust(
            audience, dict(common, SPACESIM_ROLE="audience"), run_time + GRACE, swarm_cpus
        )
    finally:
        # the audience is done; the stage ends at its own run time (Locust's clean stop:
        # the room ends, the process writes its part), stopped if it lingers
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STAGE_MARGIN + GRACE)
        launch.stop(proc)
        reader.join(5)
        proc.stdout.close()
    stage_rc = proc.returncode
    return rc if rc != 0 or stage_rc == 0 else stage_rc


@contextlib.contextmanager
def browser_probes(
    sc: Scenario,
    url: str,
    run_time: float,
    parts: Path,
    run_id: str,
    t0: float,
    env: dict[str, str],
    out_dir: Path,
    chromium: str | None,
    cpus: Collection[int] | None = None,
) -> Iterator[None]:
    """``load.browser_probes`` Chromium listeners beside the swarm, for the block.

    A helper process (`spacesim.load.browser`: playwright's asyncio API, away from
    Locust's gevent) writes its records as a part that `merge_parts` picks up.
    """
    n = planned_browser_probes(sc)
    if n == 0 or chromium is None:
        yield
        return
    log_path = out_dir / "browser.log"
    with open(log_path, "wb") as log:
        cmd = [
            sys.executable, "-m", "spacesim.load.browser", "--url", url, "--probes", str(n),
            "--seconds", f"{run_time:g}", "--out", str(parts.resolve()), "--run-id", run_id,
            "--t0", repr(t0), "--chromium", chromium,
        ]  # fmt: skip
        _say(f"{n} browser probe(s): Chromium {chromium}, log {log_path}")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        launch.pin(proc, cpus)  # Chromium's processes inherit the mask
        try:
            yield
        finally:
            launch.stop(proc, timeout=30.0)  # SIGTERM: the helper writes its part and exits
    if proc.returncode not in (0, -15):
        _say(f"the browser probes' helper exited {proc.returncode}: see {log_path}")


def server_capacity(sc: Scenario) -> int | None:
    """The embedded server's admission limit: the model's, ``server.max_streams``."""
    return sc.server.max_streams


def server_slots(sc: Scenario) -> int:
    """The speakers each listener of the embedded server hears at once: the model's,
    ``server.slots``."""
    return sc.server.slots


def planned_browser_probes(sc: Scenario) -> int:
    """How many browser probes the run adds (``load.browser_probes``)."""
    return sc.load.browser_probes


def browser_for(sc: Scenario) -> str | None:
    """Chromium for the run's browser probes (None without any); installed by
    scripts/setup-test-deps.sh when missing, `LoadError` when it cannot be."""
    if planned_browser_probes(sc) == 0:
        return None
    from spacesim.load import browser

    try:
        return browser.ensure_chromium()
    except browser.BrowserUnavailable as exc:
        raise LoadError(str(exc)) from None


def merge_parts(parts_dir: Path, run_id: str) -> pd.DataFrame:
    """One record frame from every process's ``part-*.parquet``."""
    frames = [pd.read_parquet(p) for p in sorted(parts_dir.glob("part-*.parquet"))]
    cols = ["kind", "t", "room", "participant", "role", "value", "attrs"]
    rows: list[Any] = []
    for f in frames:
        f = f[cols].astype({"kind": str, "room": str, "role": str})
        f["attrs"] = f["attrs"].astype(object).where(f["attrs"].notna(), None)
        rows += list(f.itertuples(index=False, name=None))
    return records_frame(rows, run_id, "load")


def main(
    scenario_path: str | Path,
    target: str | None = None,
    users: int | None = None,
    duration: float | None = None,
    workers: int = 0,
    out: str | Path | None = None,
    spawn_rate: float | None = None,
    show: Show | None = None,
    shape: str = "arrivals",
    network: str = "scenario",
    clock: str = "local",
    overrides: Sequence[str] = (),
    on_url: Callable[[str], None] | None = None,
    server_cpus: Collection[int] | None = None,
    swarm_cpus: Collection[int] | None = None,
    ice_hosts: Sequence[str] = (),
    stage_cpus: Collection[int] | None = None,
) -> int:
    """Run a load test; 0 on success, 2 for a refused run, 1 when nothing was measured.

    `show(summary, scenario, title)` presents the summary (the CLI passes the same table
    `spacesim simulate` prints); without it the summary is printed as plain text.
    `shape` is ``arrivals`` (users follow the scenario's arrival profile, peaking at
    `users`) or ``steady``; `network` is ``scenario`` (each client's path gets the
    scenario's delay, jitter and loss) or ``none``; `clock` is ``local`` (latencies on
    this machine's monotonic clock) or ``server`` (each Locust process reads the
    server's clock through an offset: `spacesim.client.clock`). `overrides` are
    ``PATH=VALUE`` edits of the scenario, as `spacesim simulate --set` takes them.
    `on_url(url)` is called with the server's address once it answers, before the swarm
    starts (`spacesim demo` prints it: the swarm's spaces can be heard there meanwhile).
    `server_cpus` and `swarm_cpus` pin the embedded server and the swarm's processes
    (Locust, browser probes) to CPUs, so that neither's figures include the other's work.
    `ice_hosts` are the addresses the swarm's clients gather ICE host candidates on
    (default 127.0.0.1): a target elsewhere (another machine, a network namespace)
    needs addresses it can reach.
    With `stage_cpus`, the hosts (and the stage members they seat: every sender) run in
    a Locust process of their own pinned there, the audience in another (`_stage_split`):
    senders then send on time however busy the audience's process is.
    """
    try:
        if shape not in ("arrivals", "steady"):
            raise LoadError(f"shape must be arrivals or steady, got {shape!r}")
        if network not in ("scenario", "none"):
            raise LoadError(f"network must be scenario or none, got {network!r}")
        if clock not in CLOCK_NOTES:
            raise LoadError(f"clock must be local or server, got {clock!r}")
        return _main(
            scenario_path, target, users, duration, workers, out, spawn_rate, show, shape,
            network, clock, overrides, on_url, server_cpus, swarm_cpus, ice_hosts, stage_cpus,
        )  # fmt: skip
    except (LoadError, ScenarioError, FileExistsError) as exc:
        _say(str(exc))
        return 2


def _main(
    scenario_path: str | Path,
    target: str | None,
    users: int | None,
    duration: float | None,
    workers: int,
    out: str | Path | None,
    spawn_rate: float | None,
    show: Show | None,
    shape: str,
    network: str,
    clock: str,
    overrides: Sequence[str],
    on_url: Callable[[str], None] | None,
    server_cpus: Collection[int] | None = None,
    swarm_cpus: Collection[int] | None = None,
    ice_hosts: Sequence[str] = (),
    stage_cpus: Collection[int] | None = None,
) -> int:
    if server_cpus is not None and target is not None:
        raise LoadError("--server-cpus pins the embedded server; it needs no --target")
    sc = load_scenario(scenario_path, overrides)
    run_time = min(sc.duration, MAX_DEFAULT_DURATION) if duration is None else duration
    if not (0 < run_time <= 24 * 3600):
        raise LoadError(f"duration must be in (0, 86400] s, got {run_time}")
    auto_users, auto_spawn = default_users(sc, run_time)
    n_users = auto_users if users is None else users
    fixed = sc.rooms.count + posters(sc)
    if not (fixed < n_users <= MAX_USERS):
        raise LoadError(
            f"users must be more than the {fixed} host(s) and poster(s) and at most {MAX_USERS}, "
            f"got {n_users}"
        )
    if workers < 0:
        raise LoadError(f"workers must be >= 0, got {workers}")
    if stage_cpus is not None and workers > 0:
        raise LoadError("--stage-cpus runs the hosts in a process of their own: no --workers")
    spawn = auto_spawn if spawn_rate is None else spawn_rate
    run_id = RunMeta.new_run_id()
    out_dir = Path(out) if out else Path("runs") / run_id
    if (out_dir / "meta.json").exists():
        raise FileExistsError(f"{out_dir} already holds a run; pick another --out")
    if target is not None:
        check_target(target)  # fail fast, before any server or Locust starts
        if clock == "server" and targets.driver_of(target) != "spacesim":
            raise LoadError(
                "--clock server reads spacesim's clock endpoint, which the target does not "
                "have: run the swarm on one machine (--clock local)"
            )
    lacking = target_lacks(sc, target)
    # before any server starts: a clear refusal if there is none
    chromium = browser_for(sc) if "browser_probes" not in lacking else None
    _raise_fd_limit(n_users)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    wall0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spacesim-load-") as tmp:
        workdir = Path(tmp)
        server_dir = out_dir / SERVER_RUN
        if server_dir.exists():
            shutil.rmtree(server_dir)
        server = (
            embedded_server(workdir, server_dir, server_cpus, server_capacity(sc), server_slots(sc))
            if target is None
            else contextlib.nullcontext(target)
        )
        with server as url:
            if on_url is not None:
                on_url(url)
            parts = out_dir / "parts"
            locust_dir = out_dir / "locust"
            if parts.exists():
                shutil.rmtree(parts)
            locust_dir.mkdir(parents=True, exist_ok=True)
            if lacking:
                _note_lacking(parts, run_id, lacking)
            # time zero until the swarm's first process starts its users (load.state,
            # State.start_clock: they write it to SPACESIM_T0_FILE, read back below)
            t0 = time.time()
            t0_file = workdir / "t0"
            t0_file.unlink(missing_ok=True)
            # The Locust processes read the scenario as resolved here (overrides applied).
            resolved = workdir / "scenario.yaml"
            resolved.write_text(sc.to_yaml(), encoding="utf-8")
            env = _child_env(
                SPACESIM_SCENARIO=str(resolved),
                SPACESIM_LOAD_OUT=str(parts.resolve()),
                SPACESIM_RUN_ID=run_id,
                SPACESIM_T0=repr(t0),
                SPACESIM_T0_FILE=str(t0_file),
                SPACESIM_SHAPE=shape,
                SPACESIM_NETWORK=network,
                SPACESIM_CLOCK=clock,
                SPACESIM_ICE_HOSTS=",".join(ice_hosts or ("127.0.0.1",)),
            )
            cmd = [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(_locustfile(workdir)),
                "--headless",
                "-u",
                str(n_users),
                "-r",
                f"{spawn:g}",
                "-t",
                f"{math.ceil(run_time)}s",
                "--host",
                url,
                "--csv",
                str(locust_dir / "locust"),
                "--html",
                str(locust_dir / "report.html"),
                "--exit-code-on-error",
                "0",
                "--only-summary",
            ]
            if workers > 0:
                cmd += ["--processes", str(workers)]
            # a cluster target: its nodes' CPU and packets, sampled over HTTP (load.nodes)
            spacesim_target = target is not None and targets.driver_of(target) == "spacesim"
            nodes = NodeSampler(url, t0) if spacesim_target else None
            with (
                target_meter(target, server_dir, run_id, sc),
                browser_probes(
                    sc, url, run_time, parts, run_id, t0, env, out_dir, chromium, swarm_cpus
                ),
                nodes or contextlib.nullcontext(),
            ):
                if stage_cpus is None:
                    rc = _run_locust(cmd, env, run_time + GRACE, swarm_cpus)
                else:
                    rc = _stage_split(
                        cmd, env, sc, n_users, run_time, workdir, stage_cpus, swarm_cpus
                    )
            t0 = read_t0(t0_file) or t0
            if nodes is not None and nodes.active:
                if server_dir.exists():
                    shutil.rmtree(server_dir)
                nodes.write(server_dir, started_at, time.time() - t0)
    wall = time.monotonic() - wall0
    records = merge_parts(parts, run_id) if parts.is_dir() else None
    if records is None or records.empty:
        _say(f"locust exited {rc} and no records were written (see its output above)")
        return 1
    meta = RunMeta(
        run_id=run_id,
        source="load",
        scenario_name=sc.name,
        scenario_hash=sc.content_hash(),
        seed=sc.seed,
        started_at=started_at,
        duration=run_time,
        wall_seconds=wall,
        scenario=sc.model_dump(mode="json"),
        extra={
            "target": target or "embedded",
            "driver": targets.driver_of(target) if target else "spacesim",
            "users": n_users,
            "spawn_rate": spawn,
            "workers": workers,
            "locust": metadata.version("locust"),
            "locust_exit_code": rc,
            "shape": shape,
            "network": network,
            "clock": CLOCK_NOTES[clock],
            "server_run": SERVER_RUN if (out_dir / SERVER_RUN / "meta.json").is_file() else None,
            "t0_unix": t0,
            "server_cpus": sorted(server_cpus) if server_cpus is not None else None,
            "swarm_cpus": sorted(swarm_cpus) if swarm_cpus is not None else None,
            "stage_cpus": sorted(stage_cpus) if stage_cpus is not None else None,
        },
    )
    write_run(out_dir, records, meta)
    summary = summarise_run(Run(records, meta, out_dir))
    title = f"{sc.name}: {n_users} users for {run_time:g} s (wall {wall:.1f} s), run {run_id}"
    if show is not None:
        show(summary, sc, title)
    else:
        with pd.option_context("display.width", 120, "display.max_columns", 10):
            print(title)
            print(summary.to_string())
    print(f"records: {len(records):,} -> {out_dir}")
    lacked = unsupported_actions(records)
    if lacked:
        listed = ", ".join(f"{action} x {n}" for action, n in lacked.items())
        print(f"unsupported by the target (asked for by the scenario, not performed): {listed}")
    lag = summary["p95"].get("loop_lag", math.nan)
    if lag > LAG_WARNING:
        _say(
            f"the swarm's own event loop ran {lag * 1000:.0f} ms late (p95 of loop_lag): "
            "its latency figures include that delay; run fewer users, or --workers on "
            "a machine with cores to spare"
        )
    joined = int((records["kind"] == "participant_joined").sum())
    if rc != 0:
        _say(f"locust exited {rc}")
    if not joined:
        _say(f"no participant could join {target or 'the embedded server'}: {_refusals(records)}")
    return 0 if rc == 0 and joined else 1


def _note_lacking(parts: Path, run_id: str, lacking: Sequence[str]) -> None:
    """``action_unsupported`` records for run-level features the target lacks."""
    rec = Recorder(run_id, "load")
    for feature in lacking:
        rec.add("action_unsupported", 0.0, "", "", "", 1.0, {"action": feature})
        _say(f"the target has no {feature}: left out of the run (listed in the summary)")
    parts.mkdir(parents=True, exist_ok=True)
    rec.to_frame().to_parquet(parts / "part-run.parquet", index=False)


def _refusals(records: pd.DataFrame) -> str:
    """'12 x server_full (the server is at capacity ...)' for each refusal reason seen."""
    refused = records.loc[records["kind"] == "join_refused", "attrs"].dropna()
    if refused.empty:
        return "no join was refused either (see Locust's output above)"
    counts = collections.Counter(
        (a.get("reason", "?"), a.get("detail", "")) for a in map(json.loads, refused)
    )
    return "; ".join(f"{n} x {code} ({detail})" for (code, detail), n in counts.most_common(3))
