"""docs/protocol.md suffices for a client: its example hears the host through a real server."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spacesim.protocol import ERROR_STATUS
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


def _doc_error_table() -> dict[str, int]:
    """The Errors section's table of docs/protocol.md: code -> status."""
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, flags=re.MULTILINE)
    assert len(rows) == len(set(code for code, _ in rows)), "a code is listed twice"
    return {code: int(status) for code, status in rows}


def test_the_doc_lists_every_error_code_with_its_status() -> None:
    assert _doc_error_table() == dict(ERROR_STATUS)


def test_every_code_the_server_raises_is_in_error_status() -> None:
    """The rulebook's and the server's refusals (source scan): none escapes the table."""
    pattern = re.compile(r'(?:_refuse|ProtocolError|_error)\(\s*"([a-z_]+)"')
    sources = [ROOT / "spacesim" / "policy.py", *(ROOT / "spacesim" / "server").glob("*.py")]
    raised = {m for path in sources for m in pattern.findall(path.read_text(encoding="utf-8"))}
    assert len(raised) > 20
    assert raised <= set(ERROR_STATUS), raised - set(ERROR_STATUS)
