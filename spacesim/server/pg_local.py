"""A throwaway PostgreSQL cluster on 127.0.0.1, for tests and for trying `serve --store`.

Debian's server binaries (``spacesim.deps.ensure("postgres")`` installs them when
missing) run a fresh cluster in a temporary directory: ``initdb`` with a random password
(SCRAM, so other local users cannot walk in), ``postgres`` listening on a free loopback
port and on a unix socket inside the directory, never touching the system's own cluster
or its configuration. `stop` shuts it down and removes the directory; `kill` crashes it
(SIGKILL to every process) and `start` brings it back through crash recovery.
``fsync=False`` trades durability against a machine crash for speed (tests).

PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged
account: ``postgres`` (which Debian's package creates) or else ``nobody``; the child
processes drop to it with ``subprocess``'s ``user=``/``group=``. As anyone else it is
the caller's own.

Try it: ``python -m spacesim.server.pg_local`` prints a URL for ``spacesim serve --store``
and keeps the cluster up until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from spacesim import deps
from spacesim.server.launch import free_port

__all__ = ["LocalPostgres", "PostgresUnavailable"]

SUPERUSER = "spacesim"


class PostgresUnavailable(Exception):
    """The throwaway cluster could not be created or started (the reason says why)."""


def _account() -> pwd.struct_passwd | None:
    """The unprivileged account to run the cluster as root; None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root and neither 'postgres' nor 'nobody' exists")


class LocalPostgres:
    """One throwaway cluster; ``with LocalPostgres() as pg: pg.create_database("x")``."""

    def __init__(self, port: int | None = None, timeout: float = 60.0, fsync: bool = True) -> None:
        self.port = port or free_port()
        self.fsync = fsync
        self.timeout = timeout
        self.password = secrets.token_hex(16)
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._account = _account()

    # ------------------------------------------------------------------ addresses

    def url(self, database: str = "postgres") -> str:
        """A libpq URL of `database` on this cluster (for `spacesim serve --store`)."""
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    # ------------------------------------------------------------------ life cycle

    def _run_as(self) -> dict[str, Any]:
        """`subprocess` arguments that drop to the cluster's account (as root only)."""
        if self._account is None:
            return {}
        return {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}

    def start(self) -> Self:
        """initdb a new cluster (the first time) and start it; PostgresUnavailable (with
        its log) if not. After `kill` it starts the same cluster again, which recovers."""
        bindir = Path(deps.ensure("postgres")).parent
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        if self.root is None:
            self._initdb(bindir, env)
        assert self.root is not None
        cmd = [str(bindir / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port)]
        cmd += ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]
        cmd += ["-c", f"unix_socket_directories={self.root}"]
        if not self.fsync:  # a crash of PostgreSQL keeps what reached the kernel either way
            cmd += ["-c", "fsync=off"]
        with open(self.root / "postgres.log", "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it
                **self._run_as(),
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _initdb(self, bindir: Path, env: dict[str, str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="spacesim-pg-"))
        data, pwfile = self.root / "data", self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._account is not None:
            for path in (self.root, pwfile):
                os.chown(path, self._account.pw_uid, self._account.pw_gid)
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER]
        initdb += [f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"]
        initdb += ["--no-sync"]  # a throwaway cluster: the kernel holding its files is enough
        init = subprocess.run(
            initdb,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            timeout=self.timeout,
            **self._run_as(),
        )
        pwfile.unlink()
        if init.returncode != 0:
            self._remove()
            raise PostgresUnavailable(f"initdb failed: {(init.stdout + init.stderr)[-2000:]}")

    def _wait_ready(self) -> None:
        import psycopg

        assert self._proc is not None and self.root is not None
        deadline = time.monotonic() + self.timeout
        while True:
            if self._proc.poll() is not None:
                tail = (self.root / "postgres.log").read_text(errors="replace")[-2000:]
                raise PostgresUnavailable(f"postgres exited with {self._proc.returncode}: {tail}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"postgres did not accept connections: {exc}"
                    ) from None
            time.sleep(0.1)

    def create_database(self, name: str, icu_locale: str | None = None) -> str:
        """A new empty database; returns its URL. With `icu_locale` (e.g. ``en-US``) text
        sorts by that language's rules, as on most installations, instead of by byte."""
        import psycopg
        from psycopg import sql

        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if icu_locale is not None:
            query += sql.SQL(" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE {}").format(
                sql.Literal(icu_locale)
            )
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(query)
        return self.url(name)

    def pids(self) -> list[int]:
        """The server's processes: the postmaster and its children (backends, WAL writer,
        checkpointer...). Each child is its own process group (PostgreSQL calls setsid in
        every child, miscinit.c InitPostmasterChild), so they are found by parent."""
        if self._proc is None or self._proc.poll() is not None:
            return []
        found = [self._proc.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_bytes()
                    if int(stat[stat.rindex(b")") + 2 :].split()[1]) == self._proc.pid:
                        found.append(int(entry))  # field 4, ppid (proc(5))
        return found

    def kill(self) -> None:
        """SIGKILL the server and every backend, as a crash of the database's machine
        would stop them (without losing what the kernel holds); `start` recovers it."""
        pids, proc, self._proc = self.pids(), self._proc, None
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(10)

    def stop(self) -> None:
        """Stop the server and remove the directory. Immediate shutdown (SIGQUIT: no
        checkpoint, which would sync every database only to delete it)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._remove()

    def _remove(self) -> None:
        root, self.root = self.root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> int:
    """Run a cluster with a ``spacesim`` database until Ctrl-C (or SIGTERM)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # unwinds to `stop`
    with LocalPostgres() as pg:
        url = pg.create_database("spacesim")
        print(f"PostgreSQL is up; try:\n  spacesim serve --store '{url}'", flush=True)
        print("Ctrl-C stops it and deletes its data.", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
