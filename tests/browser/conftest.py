"""Chromium for the browser tests: found, or installed by the project's own script.

No test here skips for want of a browser: if scripts/setup-test-deps.sh cannot install
one, the tests fail and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup-test-deps.sh"
CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def find_chromium() -> str | None:
    """$SPACESIM_CHROMIUM, else Debian's (or Ubuntu's) Chromium, else None."""
    named = os.environ.get("SPACESIM_CHROMIUM")
    for path in (named, *CANDIDATES):
        if path and os.access(path, os.X_OK):
            return path
    return None


def ensure_chromium(setup: Path = SETUP) -> str:
    """A Chromium executable; runs the setup script once if there is none, and fails the
    test (never skips it) if there is still none."""
    path = find_chromium()
    if path is not None:
        return path
    bash = shutil.which("bash") or "/bin/bash"
    proc = subprocess.run([bash, str(setup)], capture_output=True, text=True, timeout=900)
    path = find_chromium()
    if path is None:
        pytest.fail(
            f"no Chromium after {setup} (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    return ensure_chromium()
