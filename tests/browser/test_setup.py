"""The project installs the browser its tests need (scripts/setup-test-deps.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from spacesim.load import browser
from tests.browser import conftest


def test_the_setup_script_does_nothing_when_a_chromium_is_there(tmp_path: Path) -> None:
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    # no apt-get on this PATH: were the script to try installing, it would fail
    env = {"PATH": "/bin", "SPACESIM_CHROMIUM": str(fake), "HOME": str(tmp_path)}
    proc = subprocess.run(
        ["/bin/bash", str(conftest.SETUP)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"chromium: {fake}"


def test_no_chromium_after_the_script_fails_the_test_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = tmp_path / "ran"
    script = tmp_path / "setup.sh"
    script.write_text(f"touch {ran}\necho 'cannot install' >&2\nexit 1\n")
    monkeypatch.setattr(browser, "find_chromium", lambda: None)
    with pytest.raises(pytest.fail.Exception, match="cannot install"):
        conftest.ensure_chromium(script)
    assert ran.exists()


def test_the_script_is_executable() -> None:
    assert os.access(conftest.SETUP, os.X_OK)
