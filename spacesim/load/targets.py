"""Target drivers: which `SpaceClient` the swarm uses for a target URL, and its checks.

A *target* is the server under test. Its URL's scheme picks the driver:

* ``http://`` / ``https://``: spacesim's own protocol (`spacesim.load.live.LiveClient`),
  the default and the only one that does everything a scenario asks;
* ``janus://HOST[:PORT][/PATH][?plugin=videoroom|audiobridge]``: Janus's VideoRoom
  (default) or AudioBridge plugin over its HTTP API (`spacesim.load.janus`).

A driver is a `spacesim.load.api.ClientFactory`; what a target lacks is declared by
its clients (``lacks``) or raised as `spacesim.load.api.Unsupported`, and the swarm
records each as ``action_unsupported`` (listed in the run's summary).
"""

from __future__ import annotations

import functools
import json
import urllib.error
import urllib.request
from typing import Any

import aiohttp

from spacesim.load.api import ClientFactory

__all__ = ["SCHEMES", "TargetError", "check_janus", "client_factory", "driver_of"]

#: URL scheme -> driver name.
SCHEMES = {"http": "spacesim", "https": "spacesim", "janus": "janus"}


class TargetError(ValueError):
    """A target URL no driver takes, or a target that does not answer as its driver expects."""


def driver_of(url: str) -> str:
    """``spacesim`` or ``janus`` for a target URL (`TargetError` for anything else)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise TargetError(
            f"target {url!r}: the URL's scheme picks the driver: http(s):// (spacesim) or "
            "janus://HOST[:PORT][/PATH][?plugin=videoroom|audiobridge]"
        )
    return SCHEMES[scheme]


def client_factory(url: str, http: aiohttp.ClientSession) -> ClientFactory:
    """The driver's client factory for `url` (one per process; call on the asyncio loop)."""
    if driver_of(url) == "janus":
        from spacesim.load.janus import JanusFactory

        return JanusFactory(url, http)
    from spacesim.load.live import LiveClient, Nodes

    return functools.partial(LiveClient, url, http=http, nodes=Nodes(url))


def check_janus(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """``GET /info`` of a Janus target: its info, or `TargetError` naming what is wrong
    (unreachable, not Janus, the plugin not loaded)."""
    from spacesim.load.janus import JanusTarget

    try:
        target = JanusTarget.parse(url)
    except ValueError as exc:
        raise TargetError(str(exc)) from None
    try:
        with urllib.request.urlopen(f"{target.http}/info", timeout=timeout) as r:
            info: dict[str, Any] = json.loads(r.read())
    except (OSError, urllib.error.URLError) as exc:
        raise TargetError(
            f"no Janus answers at {target.http}/info ({exc}); start one with `spacesim janus up`"
        ) from None
    except ValueError:
        raise TargetError(f"{target.http}/info did not answer JSON: not a Janus server") from None
    if info.get("janus") != "server_info":
        raise TargetError(f"{target.http}/info is not Janus's server_info")
    if target.plugin_name not in (info.get("plugins") or {}):
        raise TargetError(f"Janus at {target.http} has no {target.plugin_name} plugin loaded")
    return info
