"""`python -m spacesim.server.pg_local`: the throwaway cluster README.md offers newcomers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from spacesim.server.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def test_pg_local_serves_a_database_until_sigterm_then_leaves_nothing_behind() -> None:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    with subprocess.Popen(
        [sys.executable, "-m", "spacesim.server.pg_local"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        try:
            lines = [proc.stdout.readline() for _ in range(2)]
            found = re.search(r"--store '(postgresql://[^']+)'", "".join(lines))
            assert found, lines
            url = found[1]
            store = open_store(url)
            try:
                store.add_user("u", "U")
                assert store.get_user("u").display_name == "U"
            finally:
                store.close()
            with psycopg.connect(url) as conn:
                data = Path(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
                assert conn.execute("SHOW fsync").fetchone() == ("on",)  # for real use
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    assert not data.parent.exists()  # the cluster's directory went with it
    assert subprocess.run(["pgrep", "-f", f"postgres -D {data}"]).returncode == 1
