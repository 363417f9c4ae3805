"""Start `spacesim serve` as a child process on loopback and wait until it answers.

One launcher for everything that needs a real server process: `spacesim load`'s
embedded server, the benchmarks and the kill -9 tests. Nothing here imports the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ServerUnavailable",
    "cluster",
    "embedded_server",
    "free_port",
    "health",
    "pin",
    "redis_server",
    "start",
    "wait_up",
]


class ServerUnavailable(Exception):
    """No spacesim server answers at an address (or the child process died)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """``GET url/healthz``: the answer, or ServerUnavailable naming what is wrong."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=timeout) as r:
            body = r.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        raise ServerUnavailable(
            f"{url} is not a spacesim server (/healthz answered {exc.code})"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServerUnavailable(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "protocol" not in data:
        raise ServerUnavailable(
            f"{url} is not a spacesim server (/healthz gave no protocol version)"
        )
    return data


def start(
    db: Path | str,
    port: int | None = None,
    log: IO[bytes] | int | None = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    cwd: Path | None = None,
    cpus: Collection[int] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Launch `spacesim serve` (not waiting for it); returns the process and its base URL.

    `db` is the ``--store``: a SQLite file or a ``postgresql://`` URL. `args` are further
    `spacesim serve` options, e.g. ``["--record", DIR]``; `cwd` its working directory
    (where a URL store's secret and files go); `cpus` pins the server (and the threads
    and processes it starts) to those CPUs.
    """
    port = port or free_port()
    cmd = [sys.executable, "-m", "spacesim.cli", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--store", str(db), *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    pin(proc, cpus)
    return proc, f"http://127.0.0.1:{port}"


def pin(proc: subprocess.Popen[bytes], cpus: Collection[int] | None) -> None:
    """Pin a just-started process to `cpus` (None: leave it). Threads and children it
    starts later inherit the mask (sched_setaffinity(2)); it has started none yet."""
    if cpus is not None:
        os.sched_setaffinity(proc.pid, set(cpus))


def wait_up(proc: subprocess.Popen[bytes], url: str, timeout: float = 30.0) -> None:
    """Poll /healthz until the server answers; ServerUnavailable if it dies or never does."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerUnavailable(f"the server exited with code {proc.returncode}")
        try:
            health(url, timeout=1.0)
            return
        except ServerUnavailable:
            if time.monotonic() > deadline:
                raise ServerUnavailable(
                    f"{url} did not answer /healthz within {timeout:.0f} s"
                ) from None
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (a clean shutdown writes --record runs), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def embedded_server(
    workdir: Path,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    port: int | None = None,
    cpus: Collection[int] | None = None,
) -> Iterator[str]:
    """A server with a fresh database in `workdir` for the duration of the block."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        proc, url = start(workdir / "server.db", port, log=log, env=env, args=args, cpus=cpus)
        try:
            try:
                wait_up(proc, url, timeout)
            except ServerUnavailable as exc:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise ServerUnavailable(f"{exc}\n{tail}") from None
            yield url
        finally:
            stop(proc)


@contextlib.contextmanager
def redis_server(
    workdir: Path, port: int | None = None, timeout: float = 15.0, bind: Sequence[str] = ()
) -> Iterator[str]:
    """A throwaway ``redis-server`` on 127.0.0.1 (no persistence: the cluster keeps only
    what may be lost there) for the block; yields its ``redis://`` URL. `bind` lists
    further addresses it listens on (e.g. veth ends facing network namespaces)."""
    from spacesim import deps

    exe = deps.ensure("redis")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", *bind, "--save", "",
           "--appendonly", "no", "--dir", str(workdir),
           # protected mode refuses every non-loopback client: off only when asked to
           # listen on other addresses (it then listens on those alone)
           "--protected-mode", "no" if bind else "yes"]  # fmt: skip
    with open(workdir / "redis.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise ServerUnavailable(f"redis-server exited with code {proc.returncode}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        s.sendall(b"PING\r\n")
                        if s.recv(64).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerUnavailable(f"redis-server did not answer within {timeout:.0f} s")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop(proc)


@contextlib.contextmanager
def cluster(
    workdir: Path,
    nodes: int = 2,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    store: str | None = None,
) -> Iterator[tuple[str, list[tuple[subprocess.Popen[bytes], str]]]]:
    """Redis and `nodes` `spacesim serve --cluster` nodes sharing one store -- a SQLite
    file in `workdir`, or `store` (a ``postgresql://`` URL; the nodes then run in
    `workdir`, where its secret and files go) -- for the block: yields (redis URL,
    [(process, base URL)], node-1 first)."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with redis_server(workdir / "redis") as redis_url, contextlib.ExitStack() as stack:
        procs: list[tuple[subprocess.Popen[bytes], str]] = []
        logs = []
        try:
            for i in range(1, nodes + 1):
                log = stack.enter_context(open(workdir / f"node-{i}.log", "wb"))
                logs.append(workdir / f"node-{i}.log")
                extra = ["--cluster", redis_url, "--node-id", f"node-{i}", *args]
                db = store or workdir / "server.db"
                where = workdir if store else None  # a URL store's secret: one for all
                procs.append(start(db, log=log, env=env, args=extra, cwd=where))
                if i == 1:  # the first creates the database; the others open it
                    _wait(procs[0], logs[0], timeout)
            for (proc, url), path in zip(procs[1:], logs[1:], strict=True):
                _wait((proc, url), path, timeout)
            yield redis_url, procs
        finally:
            for proc, _ in procs:
                stop(proc)


def _wait(node: tuple[subprocess.Popen[bytes], str], log: Path, timeout: float) -> None:
    try:
        wait_up(node[0], node[1], timeout)
    except ServerUnavailable as exc:
        tail = log.read_text(errors="replace")[-2000:]
        raise ServerUnavailable(f"{exc}\n{tail}") from None
