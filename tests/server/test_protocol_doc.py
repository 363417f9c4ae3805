"""docs/protocol.md suffices for a client: its example hears the host through a real server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from spacesim.server import launch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


async def test_documented_client_hears_the_host(tmp_path: Path) -> None:
    server, base = launch.start(tmp_path / "doc.db")
    try:
        await asyncio.to_thread(launch.wait_up, server, base)
        example = ROOT / "examples" / "hello_space.py"
        proc = subprocess.run(
            [sys.executable, str(example), "--base", base, "--seconds", "2"],
            capture_output=True,
            text=True,
            timeout=45,
        )
    finally:
        server.kill()
        server.wait(timeout=10)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "heard 440 Hz" in proc.stdout
