"""Janus's HTTP API (janus.conf.meetecho.com/docs/rest): one session, its handles, its events.

A `JanusSession` is shared by every client of a load process: one ``create``, one
long poll (``GET /janus/SESSION?maxev=N``, which also keeps the session alive), and a
plugin handle per client connection (``attach``). Plugin requests are either
synchronous (``create``, ``destroy``, ``listparticipants``, ``moderate``, ``kick``:
the answer carries ``plugindata``) or asynchronous (``join``, ``publish``,
``configure``, ``start``: the answer is an ``ack`` and the result comes as an
``event`` with the same ``transaction`` on the long poll). `message` hides the
difference. Events that answer no request (``webrtcup``, ``hangup``, ``detached``,
``media``, a VideoRoom's ``kicked``) go to the handle's listener, if any.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from spacesim.client.session import ClientError

__all__ = ["JanusSession"]

log = logging.getLogger("spacesim.load.janus")

POLL_EVENTS = 50  # events per long poll answer (maxev)
POLL_TIMEOUT = 45.0  # Janus answers an idle long poll after 30 s with a keepalive
REQUEST_TIMEOUT = 15.0
OnEvent = Callable[[dict[str, Any]], None]


def _error(data: dict[str, Any]) -> ClientError:
    err = data.get("error") or {}
    return ClientError(502, f"janus_{err.get('code', '?')}", str(err.get("reason", data)))


class JanusSession:
    """One Janus session over HTTP, its long poll and its handles' events."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base.rstrip("/")
        self.id: int | None = None
        self._tx = itertools.count()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[int, OnEvent] = {}
        self._poll: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock | None = None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        tx = f"t{next(self._tx)}"
        try:
            async with self.http.post(
                f"{self.base}{path}",
                json={**body, "transaction": tx},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as r:
                data: dict[str, Any] = await r.json(content_type=None)
        except aiohttp.ClientConnectionError as exc:
            raise ClientError(0, "unreachable", f"{self.base}: {exc}") from None
        except ValueError:
            raise ClientError(502, "bad_response", "not a Janus server") from None
        if data.get("janus") == "error":
            raise _error(data)
        return data

    async def open(self) -> int:
        """The session id, creating the session (and its long poll) on first use."""
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self.id is None or self._poll is None or self._poll.done():
                data = await self._post("", {"janus": "create"})
                self.id = int(data["data"]["id"])
                self._poll = asyncio.get_running_loop().create_task(self._long_poll(self.id))
        return self.id

    async def info(self) -> dict[str, Any]:
        try:
            async with self.http.get(
                f"{self.base}/info", timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
            ) as r:
                data: dict[str, Any] = await r.json(content_type=None)
        except aiohttp.ClientConnectionError as exc:
            raise ClientError(0, "unreachable", f"{self.base}: {exc}") from None
        return data

    async def attach(self, plugin: str, on_event: OnEvent | None = None) -> int:
        """A new handle on `plugin` (``janus.plugin.videoroom``, ...)."""
        session = await self.open()
        data = await self._post(f"/{session}", {"janus": "attach", "plugin": plugin})
        handle = int(data["data"]["id"])
        if on_event is not None:
            self._listeners[handle] = on_event
        return handle

    async def detach(self, handle: int) -> None:
        self._listeners.pop(handle, None)
        if self.id is not None:
            with contextlib.suppress(ClientError):
                await self._post(f"/{self.id}/{handle}", {"janus": "detach"})

    async def message(
        self,
        handle: int,
        body: dict[str, Any],
        jsep: dict[str, Any] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A plugin request: (the plugin's ``data``, the ``jsep`` if any), synchronous
        or not; a plugin error (``error_code``) raises `ClientError` ``janus_CODE``."""
        session = await self.open()
        msg: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        tx = f"t{next(self._tx)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[tx] = fut
        try:
            try:
                async with self.http.post(
                    f"{self.base}/{session}/{handle}",
                    json={**msg, "transaction": tx},
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as r:
                    data: dict[str, Any] = await r.json(content_type=None)
            except aiohttp.ClientConnectionError as exc:
                raise ClientError(0, "unreachable", f"{self.base}: {exc}") from None
            if data.get("janus") == "error":
                raise _error(data)
            if data.get("janus") == "ack":
                data = await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(tx, None)
        result = (data.get("plugindata") or {}).get("data") or {}
        if "error_code" in result:
            code = result["error_code"]
            raise ClientError(409, f"janus_{code}", str(result.get("error", "")))
        return result, data.get("jsep")

    async def _long_poll(self, session: int) -> None:
        url = f"{self.base}/{session}?maxev={POLL_EVENTS}"
        failures = 0
        while True:
            try:
                async with self.http.get(
                    url, timeout=aiohttp.ClientTimeout(total=POLL_TIMEOUT)
                ) as r:
                    data = await r.json(content_type=None)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("janus long poll: %r", exc)
                if failures >= 3:
                    self._fail(ClientError(0, "unreachable", f"{self.base}: {exc}"))
                    return
                await asyncio.sleep(0.5)
                continue
            for ev in data if isinstance(data, list) else [data]:
                if isinstance(ev, dict):
                    self._dispatch(ev)
            if isinstance(data, dict) and data.get("janus") == "error":
                self._fail(_error(data))  # the session is gone (timed out, destroyed)
                return

    def _dispatch(self, ev: dict[str, Any]) -> None:
        kind = ev.get("janus")
        if kind == "keepalive":
            return
        fut = self._waiting.get(str(ev.get("transaction")))
        if kind == "event" and fut is not None and not fut.done():
            fut.set_result(ev)
            return
        listener = self._listeners.get(int(ev.get("sender") or 0))
        if listener is not None:
            listener(ev)

    def _fail(self, exc: ClientError) -> None:
        self.id = None
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        for listener in list(self._listeners.values()):
            listener({"janus": "hangup", "reason": "session lost"})
        self._listeners.clear()

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(BaseException):
                await self._poll
        if self.id is not None:
            with contextlib.suppress(ClientError, asyncio.TimeoutError):
                await self._post(f"/{self.id}", {"janus": "destroy"})
        self.id = None
