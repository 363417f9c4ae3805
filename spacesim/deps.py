"""Debian parts the project needs beyond PyPI (Chromium, redis-server, PostgreSQL, Janus).

One way to get them: `ensure` runs ``scripts/setup-test-deps.sh PART``, which finds
the part's executable or installs its package with apt-get, so a fresh machine gets
what a test or a command needs from the project's own files. A part that cannot be
had raises `PartUnavailable` with the script's reason: callers fail, never skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["SETUP", "PartUnavailable", "ensure"]

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup-test-deps.sh"
_found: dict[str, str] = {}


class PartUnavailable(Exception):
    """A part is missing and the project's setup script could not install it."""


def ensure(part: str, setup: Path = SETUP) -> str:
    """The executable of `part` (``chromium``, ``redis``, ``postgres``, ``janus``);
    installs its Debian package first when it is missing (root or sudo needed then)."""
    if part in _found:
        return _found[part]
    if not setup.is_file():
        raise PartUnavailable(f"{part} is missing and {setup} is not there to install it")
    bash = shutil.which("bash") or "/bin/bash"
    proc = subprocess.run([bash, str(setup), part], capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        name, _, path = line.partition(": ")
        if name == part and path and proc.returncode == 0:
            _found[part] = path
            return path
    raise PartUnavailable(
        f"{part} is missing and {setup} could not install it (exit {proc.returncode}): "
        f"{(proc.stdout + proc.stderr).strip()[-1000:]}"
    )
