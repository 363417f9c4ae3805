"""A real room server on 127.0.0.1 for the client tests that need one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from spacesim import rtc
from spacesim.server.app import ServerConfig, create_app

for _name in ("aioice", "aiortc", "aiohttp.access"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@pytest.fixture
async def base(tmp_path: Path) -> AsyncIterator[str]:
    """The server's base URL; ICE host candidates restricted to loopback."""
    rtc.use_host_addresses(["127.0.0.1"])
    config = ServerConfig(db=tmp_path / "client.db", secret=b"client-tests-secret-0123456789ab")
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()
