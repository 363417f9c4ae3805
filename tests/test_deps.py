"""spacesim.deps: parts from Debian, found or installed by the project's setup script."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from spacesim import deps


def test_a_part_that_cannot_be_installed_raises_with_the_scripts_reason(tmp_path: Path) -> None:
    script = tmp_path / "setup.sh"
    script.write_text("echo 'no apt-get here' >&2\nexit 1\n")
    with pytest.raises(deps.PartUnavailable, match="no apt-get here"):
        deps.ensure("redis-for-this-test", script)


def test_the_script_refuses_an_unknown_part() -> None:
    proc = subprocess.run(
        ["bash", str(deps.SETUP), "no-such-part"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "unknown part 'no-such-part'" in proc.stderr


@pytest.mark.parametrize("part", ["redis", "postgres", "janus"])
def test_the_parts_the_suite_needs_are_there_or_installed(part: str) -> None:
    path = deps.ensure(part)
    assert Path(path).is_file(), path
