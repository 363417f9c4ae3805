"""The gevent <-> asyncio bridge Locust users call aiortc clients through (FACTS.md).

One asyncio loop per Locust process, running ``run_forever`` inside a greenlet on the
main thread. After gevent's monkey-patching (``import locust`` does it) asyncio's
selector is gevent's, so the loop yields to the hub whenever it waits, and a
greenlet waiting on a ``concurrent.futures.Future`` yields too. The loop is created
lazily per process id: children forked by ``locust --processes`` must not use the
loop (and greenlet) they inherited.

A loop in a real OS thread with the unpatched selector hangs everything that uses
``run_in_executor`` (DNS, aiortc's encoder); calling `run` from a coroutine on the
loop would deadlock, so it raises instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import gevent
import greenlet

__all__ = ["BridgeError", "get_loop", "in_loop", "run", "spawn", "started"]

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_greenlet: gevent.Greenlet | None = None
_pid: int | None = None


class BridgeError(RuntimeError):
    """The bridge was misused (called from inside its own loop)."""


def _start(host_addresses: Iterable[str]) -> asyncio.AbstractEventLoop:
    global _loop, _greenlet, _pid
    from gevent import monkey

    if not monkey.is_module_patched("select"):
        raise BridgeError(
            "gevent has not monkey-patched this process: import locust (or call "
            "gevent.monkey.patch_all()) before spacesim.load.bridge"
        )
    for name in ("aioice", "aiortc"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from spacesim import rtc

    rtc.use_host_addresses(list(host_addresses))
    loop = asyncio.new_event_loop()
    g = gevent.spawn(loop.run_forever)
    g.name = "spacesim-asyncio"
    _loop, _greenlet, _pid = loop, g, os.getpid()
    gevent.sleep(0)  # let run_forever start
    return loop


def get_loop(host_addresses: Iterable[str] | None = None) -> asyncio.AbstractEventLoop:
    """This process's loop, started on first use (and again in a forked child); its
    clients gather ICE candidates on `host_addresses`, by default the run's
    (``spacesim load --ice-host``, passed as ``SPACESIM_ICE_HOSTS``; 127.0.0.1)."""
    if _loop is None or _pid != os.getpid() or _greenlet is None or _greenlet.dead:
        if host_addresses is None:
            env = os.environ.get("SPACESIM_ICE_HOSTS", "127.0.0.1")
            host_addresses = [a for a in env.split(",") if a] or ["127.0.0.1"]
        return _start(host_addresses)
    return _loop


def started() -> bool:
    """True when this process has a running bridge loop."""
    return (
        _loop is not None and _pid == os.getpid() and _greenlet is not None and not _greenlet.dead
    )


def in_loop() -> bool:
    """True when called from the loop's own greenlet (i.e. from a coroutine on it)."""
    return _greenlet is not None and _pid == os.getpid() and greenlet.getcurrent() is _greenlet


def spawn(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the loop without waiting; returns its concurrent future."""
    if in_loop():
        coro.close()
        raise BridgeError("spawn() called from the bridge's own loop: use create_task")
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def run(coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
    """Run ``coro`` on the loop and wait for its result from a greenlet.

    On timeout the coroutine is cancelled and ``TimeoutError`` raised; if the waiting
    greenlet is killed (Locust stopping a user), the coroutine is cancelled too.
    """
    if in_loop():
        coro.close()
        raise BridgeError(
            "bridge.run() called from a coroutine on the bridge's loop: it would deadlock; "
            "await the coroutine instead"
        )
    loop = get_loop()
    fut = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return fut.result(timeout)
    except TimeoutError:
        fut.cancel()
        raise TimeoutError(f"timed out after {timeout} s") from None
    except BaseException:
        fut.cancel()
        raise
